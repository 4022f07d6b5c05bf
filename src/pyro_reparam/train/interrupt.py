"""Ctrl-C that lands between two steps: the run stops at a state it can checkpoint exactly.

A ``KeyboardInterrupt`` raised in the middle of a step can leave the parameters updated but
the step not counted, a baseline half-updated, or random numbers drawn for a step that never
finishes; a checkpoint of that state resumes to another run. While :func:`fit` trains, the
first SIGINT only sets :attr:`Interrupt.requested`; the loop finishes the step, writes the
checkpoint and raises ``KeyboardInterrupt`` itself. A second Ctrl-C raises at once, as usual
(the last checkpoint written stays). Outside the main thread signals cannot be caught; there
a ``KeyboardInterrupt`` keeps the last checkpoint and writes none.
"""

from __future__ import annotations

import signal
import threading


class Interrupt:
    """Defers the first SIGINT while active (a context manager)."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous = signal.default_int_handler

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._handle)
            self._previous = signal.default_int_handler if previous is None else previous
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C raises at once

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
