"""A run's cancel switch, shared by the handle that sets it and the runner
that obeys it.

:meth:`Cancellation.cancel` may be called from any thread, any number of
times.  A runner does not poll the switch: it registers a *waker* that
interrupts the one wait it blocks in (a byte on the coordinator's wake-up
pipe, a ``None`` on the Dask runner's queue, the cancellation of the event
loop's main task), and checks :attr:`Cancellation.is_set` where it wakes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Cancellation:
    """Set once, from any thread; wakes whoever registered to hear it."""

    __slots__ = ("_lock", "_set", "_wakers", "final")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._wakers: list[Callable[[], None]] = []
        # the process is exiting: a runner keeps nothing warm for a next run
        self.final = False

    @property
    def is_set(self) -> bool:
        return self._set

    def cancel(self, final: bool = False) -> bool:
        """Set the switch and call every waker once; False if it was set
        already (then nothing is called again).  ``final``: the process is
        exiting (no worker is replaced)."""
        with self._lock:
            self.final = self.final or final
            if self._set:
                return False
            self._set = True
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()
        return True

    def on_cancel(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from the cancelling thread) when the switch is set,
        at once if it is set already.  Returns a function that unregisters
        it (call it when the wait it interrupts is over)."""
        with self._lock:
            if not self._set:
                self._wakers.append(wake)
                return lambda: self._forget(wake)
        wake()
        return lambda: None

    def _forget(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)
