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
    (model files written, run record not yet)."""
    spec = os.environ.get("TUNELAB_FAULT")
    if not spec or spec.rsplit(":", 1)[0] != point:
        return
    _HITS[point] = _HITS.get(point, 0) + 1
    if _HITS[point] == int(spec.rsplit(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)
