"""Stop requests: SIGTERM and Ctrl-C during training."""

import os
import signal

import pytest


def test_repeated_sigterms_are_one_request_and_only_a_second_ctrl_c_escalates():
    from training.signals import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # handled one at a time: each kill waits for its handler
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
