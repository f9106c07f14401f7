"""Faults a long run survives: SIGINT / SIGTERM stop it cleanly at the next step boundary (the
loop writes a checkpoint and the run is recorded ``interrupted``; ``--resume`` goes on), and,
for the kill tests only, a SIGKILL injected at a named point (``TUNELAB_FAULT``)."""

from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after writing its checkpoint; the process should exit with
    ``exit_code`` (130 for SIGINT, 143 for SIGTERM, as shells report them). A subclass of
    KeyboardInterrupt, so every caller that handles Ctrl-C handles it too."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum


class StopSignals:
    """While active, the first SIGINT or SIGTERM only sets ``signum`` (the loop finishes its
    step, checkpoints and stops); a second SIGINT raises KeyboardInterrupt at once. A signal
    the process was started with ignored stays ignored; outside the main thread (no handler
    can be installed there) it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.signum is None:
            name = signal.Signals(signum).name
            print(
                f"\ntunelab: {name} received: stopping after this step and saving a checkpoint "
                f"(press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored by whoever started us (a script's background job): keep
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


_HITS: dict[str, int] = {}


def fault(point: str) -> None:
    """Fault injection for the kill tests: with TUNELAB_FAULT=<point>:<n>, the n-th time the
    process passes ``point`` it kills itself with SIGKILL (no handler, no cleanup: what an
    out-of-memory kill or a power cut leaves). Points: ``step`` (after an optimizer step),
    ``checkpoint`` (checkpoint file written, not yet renamed into place), ``final-save``
    (model files written, run record not yet), ``export`` (exported files written, not yet
    renamed), ``worker`` (a tune worker process starting). ``<point>:<n>:raise`` raises a
    RuntimeError there instead (an unexpected error mid-run)."""
    spec = os.environ.get("TUNELAB_FAULT", "").split(":")
    if len(spec) < 2 or spec[0] != point:
        return
    _HITS[point] = _HITS.get(point, 0) + 1
    if _HITS[point] == int(spec[1]):
        if spec[2:] == ["raise"]:  # an error from deep inside (a kernel's RuntimeError)
            raise RuntimeError(f"injected fault at {point} {spec[1]} (TUNELAB_FAULT)")
        os.kill(os.getpid(), signal.SIGKILL)


class OutOfMemory(MemoryError):
    """The machine's free memory fell under the floor while a run trained: raised in the main
    thread by ``MemoryGuard`` before the kernel's out-of-memory killer takes the process (and
    every unsaved result) down. The run records it as a failure that names what to lower."""


class MemoryGuard:
    """While active, a thread checks the machine's available memory every ``every`` seconds;
    under ``floor`` bytes (TUNELAB_MEMORY_FLOOR, default the smaller of 1 GiB and 5% of the
    machine) it interrupts the main thread with ``OutOfMemory`` at its next Python step. Only
    in the main thread of the main interpreter (signals); elsewhere it does nothing."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        total = psutil.virtual_memory().total
        self.floor = int(os.environ.get("TUNELAB_MEMORY_FLOOR") or min(2**30, total // 20))
        self.every, self.low = every, None
        self._done = threading.Event()
        self._old = None

    def _raise(self, signum, frame) -> None:
        if self.low is not None:
            low, self.low = self.low, None
            raise OutOfMemory(
                f"out of memory: the machine had {low / 2**30:.2f} GiB available, under the "
                f"{self.floor / 2**30:.2f} GiB floor (TUNELAB_MEMORY_FLOOR); stopped before the "
                f"kernel would kill the process"
            )

    def _watch(self) -> None:
        import psutil

        while not self._done.wait(self.every):
            available = psutil.virtual_memory().available
            if available < self.floor and self.low is None:
                self.low = available
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def __enter__(self) -> MemoryGuard:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            self._old = signal.signal(signal.SIGUSR1, self._raise)
            threading.Thread(target=self._watch, daemon=True, name="tunelab-memory").start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._old is not None:
            signal.signal(signal.SIGUSR1, self._old)
