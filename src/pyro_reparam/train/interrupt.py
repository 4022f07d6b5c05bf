"""Ctrl-C or SIGTERM that lands between two steps: the run stops at a state it can checkpoint
exactly.

A ``KeyboardInterrupt`` raised in the middle of a step can leave the parameters updated but
the step not counted, a baseline half-updated, or random numbers drawn for a step that never
finishes; a checkpoint of that state resumes to another run. While :func:`fit` trains, the
first SIGINT (Ctrl-C) or SIGTERM only sets :attr:`Interrupt.requested`; the loop finishes the
step, writes the checkpoint and raises ``KeyboardInterrupt`` itself. SIGTERM is how torchrun's
agent stops its workers when you press Ctrl-C on it, and how SLURM and Kubernetes preempt a job;
under torchrun the ranks agree on the step to stop after (:mod:`~.distributed`). A second signal
of the same kind acts at once, as usual (the last checkpoint written stays). Outside the main
thread signals cannot be caught; there a ``KeyboardInterrupt`` keeps the last checkpoint and
writes none.
"""

from __future__ import annotations

import signal
import threading

DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """Defers the first SIGINT and the first SIGTERM while active (a context manager)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in DEFERRED:
                previous = signal.signal(signum, self._handle)
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])  # a second one acts at once

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
