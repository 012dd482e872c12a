"""How a run stops: SIGINT and SIGTERM ask training to stop after a step, and an interrupted run
saves before it goes.

train.py trains inside `with StopSignals() as stop:`, asks `stop.agreed()` after each optimizer
step, saves a checkpoint when it says so, and raises Stopped, which exits 128 + the signal's
number. DataLoader workers ignore both signals (ignore_stop_signals): the training process stops
them itself.
"""

import os
import signal
import sys
import threading

import distributed


def signal_name(number: int) -> str:
    return signal.Signals(number).name


class Stopped(Exception):
    """Training stopped on a signal; train.py prints the message and exits 128 + the number."""

    def __init__(self, number: int, message: str = ""):
        super().__init__(message or f"stopped by {signal_name(number)}")
        self.number = number


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers send before they end a job) ask training to
    stop: the loop finishes its optimizer step, every process agrees on that step, train.py saves
    a checkpoint and exits 130 or 143. A second SIGINT stops at once, without saving; the last
    checkpoint stays intact (checkpoints are written to a temporary file, then renamed).

    Use as a context manager around the training; `agreed()` after each optimizer step.
    """

    NUMBERS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = 0
        self.previous = {}
        self.agreement = None

    def __enter__(self):
        _listening.append(self)
        self.agreement = distributed.Agreement()
        if threading.current_thread() is threading.main_thread():
            for number in self.NUMBERS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        _listening.remove(self)

    def handle(self, number: int, frame) -> None:
        if number == signal.SIGINT and self.received == signal.SIGINT:
            raise Stopped(number, "stopped by a second SIGINT: not saved")
        if not self.received and distributed.is_main_process():
            again = " (press Ctrl-C again to stop at once, without saving)"
            say_now(
                f"{signal_name(number)}: stopping after this step to save a checkpoint"
                + (again if number == signal.SIGINT else "")
            )
        self.received = self.received or number

    def agreed(self) -> int:
        """The signal that all processes stop for now, or 0 to go on (a collective)."""
        return self.agreement.largest(self.received)


_listening: list[StopSignals] = []  # the StopSignals in force, innermost last


def requested() -> int:
    """The stop signal this process has received, or 0: for work between the training loop's
    agreements (a cache build) to stop at a safe point of its own."""
    return _listening[-1].received if _listening else 0


def say_now(line: str) -> None:
    """Write `line` to stderr at once: straight to the file descriptor, since the signal handler
    that calls this may have interrupted a write to sys.stderr (tqdm's, say)."""
    try:
        os.write(sys.stderr.fileno(), f"{line}\n".encode())
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured)
        print(line, file=sys.stderr)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the training process, which stops them
    itself after saving (Ctrl-C reaches every process of the terminal's foreground group)."""
    for number in StopSignals.NUMBERS:
        signal.signal(number, signal.SIG_IGN)
