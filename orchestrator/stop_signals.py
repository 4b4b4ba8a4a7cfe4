"""SIGTERM and SIGINT stop a run without losing trained work (Ctrl-C, ``ray job stop``, preemption).

The first signal asks the driver to stop. Where nothing of the current step has reached the learner
yet (generation, scoring), the step is abandoned at once: ``StopRequested`` is raised where the driver
waits, and the state after the previous step is checkpointed (its questions come again on resume).
Once the learner is updating, the step is finished, then checkpointed. Either way the driver prints
the resume command and exits with 128 + the signal's number. A second signal forces the exit
(``SystemExit``: the actors and the local Ray are still shut down on the way out, nothing is saved).

Raised from a signal handler, ``StopRequested`` can surface as another exception: when the handler
runs inside C code (Ray's Cython ``CoreWorker.wait``, a ``print``), CPython reports a ``SystemError``
("returned a result with an exception set") whose context is the ``StopRequested``. ``stop_in`` finds
it behind whatever the driver caught. ``ray.init`` installs a SIGTERM handler of its own (and Ray's
core worker one in C++): the driver installs these handlers again once Ray is up (``install`` may be
called again; ``restore`` puts back what was there before the first call).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """A stop signal arrived; the driver checkpoints and exits (``exit_code``)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_in(err: Optional[BaseException]) -> Optional[StopRequested]:
    """The ``StopRequested`` behind ``err``: ``err`` itself, or one in its chain of causes and contexts
    (C code that the signal interrupted turns it into a ``SystemError``; a wrapper re-raises ``from`` it)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, StopRequested):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class StopSignals:
    """Installs the handlers for the life of a run (main thread only; elsewhere it does nothing).

    ``abandonable`` says whether the step in progress may be dropped right now (the driver sets it);
    ``received`` is the first signal's number, if any."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.abandonable = False
        self._previous: dict = {}

    def install(self) -> "StopSignals":
        """Handle SIGTERM and SIGINT from now on; again after something else took them over (``ray.init``)."""
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                previous = signal.signal(s, self._handle)
                self._previous.setdefault(s, previous)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def check(self) -> None:
        """Raise StopRequested if a stop was asked for (the driver calls this at step boundaries)."""
        if self.received is not None:
            raise StopRequested(self.received)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            print(f"{name} again: stopping now, without a checkpoint", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.received = signum
        when = "abandoning this step" if self.abandonable else "finishing this step"
        print(f"{name}: {when}, then checkpointing and exiting (send it again to stop at once)",
              file=sys.stderr, flush=True)
        if self.abandonable:
            raise StopRequested(signum)
