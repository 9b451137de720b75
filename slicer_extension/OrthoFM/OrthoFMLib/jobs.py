"""Run one server call off Slicer's GUI thread, with progress and cancel.

Slicer's widgets may only be touched from the main thread, so the job never calls back into the
GUI: the widget polls ``snapshot()`` from a QTimer and shows progress; Cancel sets the event that the
client checks between chunks and polls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import OrthoFMCancelled

#: The callable receives ``cancel`` and ``progress`` keyword arguments.
JobFunction = Callable[..., Any]


@dataclass(frozen=True)
class JobSnapshot:
    state: str  # "running" | "done" | "failed" | "cancelled"
    message: str
    fraction: float | None  # 0..1 when the size is known
    elapsed_s: float
    result: Any = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"


class BackgroundJob:
    def __init__(self, description: str, function: JobFunction) -> None:
        self.description = description
        self._function = function
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._state = "running"
        self._message = description
        self._fraction: float | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"OrthoFM: {description}", daemon=True)

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        self._thread.join(timeout)
        return self.snapshot()

    def progress(self, done: int, total: int | None, message: str | None = None) -> None:
        with self._lock:
            self._fraction = (done / total) if total else None
            if message:
                self._message = message

    def set_message(self, message: str) -> None:
        with self._lock:
            self._message = message

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(self._state, self._message, self._fraction, time.monotonic() - self._started,
                               self._result, self._error)

    def _run(self) -> None:
        try:
            result = self._function(cancel=self.cancel_event, progress=self.progress)
        except OrthoFMCancelled as exc:
            with self._lock:
                self._state, self._error, self._message = "cancelled", exc, str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the user by the widget
            with self._lock:
                self._state, self._error, self._message = "failed", exc, str(exc)
        else:
            with self._lock:
                self._state, self._result, self._message = "done", result, f"{self.description}: done"
                self._fraction = 1.0
