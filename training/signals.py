"""Ctrl-C / SIGTERM during training: finish the current step, save a resumable checkpoint, exit cleanly."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Records SIGINT/SIGTERM instead of dying. A second Ctrl-C (SIGINT) stops at once (KeyboardInterrupt);
    repeated SIGTERMs are one request: Slurm, systemd and ``kill -- -PGID`` signal the whole process group, and
    a launcher passes its own on, so each process often gets several."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
