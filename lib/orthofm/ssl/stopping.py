"""Stopping a pretraining run cleanly: decisions every rank shares, and SIGTERM/SIGINT as "checkpoint and stop".

Under DDP every rank must take the same branch at a checkpoint, because saving one gathers every rank's RNG
state (a collective). A time-based "checkpoint due?" taken on each rank alone can differ by one step between
ranks, and the collectives then pair up wrongly (a hang on gloo and NCCL alike); :func:`agree_any` turns a
per-rank flag into one answer for all.

Clusters preempt jobs with SIGTERM and people press Ctrl-C; both should cost no more than the current step.
:class:`StopRequest` records the first such signal (the loop then writes a checkpoint and raises
:class:`PretrainingStopped`); a second signal gets the process's previous handler, so it still kills.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # typing.Self is 3.11+, OrthoFM supports 3.10
    from typing_extensions import Self

__all__ = ["PretrainingStopped", "StopRequest", "agree_any"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PretrainingStopped(RuntimeError):
    """A signal stopped the run after its checkpoint was written; the same command resumes it."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; the checkpoint is written, "
                         "rerun the same command to resume")


def agree_any(flag: bool, world: int, device: torch.device | None = None) -> bool:
    """True on every rank when it is True on any rank (one tiny all-reduce; no communication on one process)."""
    if world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StopRequest:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`signum` instead of ending the process.

    Signal handlers can only be installed from the main thread; elsewhere (a server thread, a notebook worker)
    this does nothing and the signals keep their usual effect.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()  # a second signal acts as it would have without us (e.g. Ctrl-C twice aborts)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the closest we can restore
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
