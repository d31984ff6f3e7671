"""SIGTERM and SIGINT for `rayft serve`, caught from its first line on (`lifecycle.py` says what they
do). A module of its own, importing nothing slow, so the handlers are in place before the imports
that take a second or two."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Start-up phases whose code installs signal handlers of its own: Ray's start (`ray.init`) does, and a
# SIGTERM that reaches its handler dumps a stack and aborts the process. During these phases the
# signals are held pending, and delivered to rayft's handlers when the next phase begins.
HELD_DURING = ("ray",)


class StoppedDuringStartup(Exception):
    """A stop signal came before the app was deployed."""


class StopSignals:
    """Records the first SIGTERM or SIGINT; start-up checks it between phases, and the running
    server waits for it."""

    def __init__(self):
        self.received: list[str] = []
        self.arrived = threading.Event()
        self.install()

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum, _frame) -> None:
        self.received.append(signal.Signals(signum).name)
        self.arrived.set()

    def before(self, phase: str) -> None:
        """Between start-up phases: take the handlers back (Ray's start replaces SIGTERM's), let a
        signal held during the last phase through to them, and stop start-up if a signal came; then
        hold the signals while `phase` runs when it is one of HELD_DURING."""
        self.install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a held signal is handled here
        if self.arrived.is_set():
            raise StoppedDuringStartup(self.received[0])
        if phase in HELD_DURING:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def wait(self) -> str:
        """Block until SIGTERM or SIGINT has arrived (perhaps during start-up); its name."""
        self.install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        while not self.arrived.wait(1.0):
            pass
        for signum in STOP_SIGNALS:  # a second signal while draining changes nothing
            signal.signal(signum, signal.SIG_IGN)
        return self.received[0]
