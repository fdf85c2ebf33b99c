"""Errors reduced to the one line a user sees."""

from training import errors


def test_worker_errors_are_reduced_to_their_message():
    wrapped = errors.BadImageError("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most "
                                   "recent call last):\n  File \"x.py\", line 1\ntraining.errors.BadImageError: "
                                   "cannot read image a/b.JPEG: truncated")
    assert errors.one_line(wrapped) == "cannot read image a/b.JPEG: truncated"
    assert errors.one_line(errors.UserError("plain message")) == "plain message"
