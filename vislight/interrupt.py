"""Stopping a run on SIGINT / SIGTERM at the next safe point, resumable by rerunning the command.

While :func:`stop_on_signals` is active, the first SIGINT (Ctrl-C) or SIGTERM (``kill``, SLURM at
its time limit, ``docker stop``) only records the request; the stages call :func:`check` at their
safe points (every mask iteration, every batch of a Lightning loop through :class:`StopCallback`,
every image of the region and report loops) and it raises :class:`RunInterrupted`. Nothing is then
half written: every artifact is written atomically (``vislight.io``) and a mask batch cut short is
dropped. A second signal raises at once.

Lightning's own SIGTERM handler (and, under SLURM with ``auto_requeue``, its SIGUSR1 handler that
saves a checkpoint and requeues the job) is composed with ours while a Trainer runs: it keeps
working, and the SIGTERM that SLURM sends after the requeue stops the run here.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


class RunInterrupted(Exception):
    """A stop signal was received; ``exit_code`` is the shell's convention (128 + signal)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.progress: list[str] = []  # what the interrupted stage had finished, for the message
        self.stage: str | None = None  # the stage that was running
        self.finished: list[str] = []  # the stages that had finished
        super().__init__(f"stopped by {self.name}")

    def __str__(self) -> str:
        where = f" during the {self.stage} stage" if self.stage else ""
        done = ", ".join(self.finished) or "no stage"
        partial = f" and {', '.join(self.progress)}" if self.progress else ""
        return (
            f"stopped by {self.name}{where}; finished: {done}{partial}. "
            "Rerun the same command to resume."
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:  # a second signal: stop now
        raise RunInterrupted(signum)
    _received = signum
    log.warning(
        "received %s: stopping at the next safe point (send it again to stop at once)",
        signal.Signals(signum).name,
    )


def check() -> None:
    """Raise :class:`RunInterrupted` when a stop signal has been received."""
    if _received is not None:
        raise RunInterrupted(_received)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into stop requests for the duration (main thread only)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = None


class StopCallback(pl.Callback):
    """Stops any Lightning loop (fit, validate, test, predict) at its next batch."""

    def on_train_batch_start(self, *args, **kwargs) -> None:
        check()

    def on_validation_batch_start(self, *args, **kwargs) -> None:
        check()

    def on_test_batch_start(self, *args, **kwargs) -> None:
        check()

    def on_predict_batch_start(self, *args, **kwargs) -> None:
        check()
