"""Dynamic batching of backbone forwards: requests that queue up run as one batch.

Inference threads prepare their images in parallel and hand the (1,3,H,W) tensor to one model thread; it takes
whatever else arrives within a few milliseconds (same input shape, up to ``max_batch``) and runs a single forward.
On a CPU this turns N queued requests into one call with better cache use, and it keeps exactly one forward
running at a time, so the cores are not oversubscribed while the event loop keeps answering.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

log = logging.getLogger("orthofm.batching")

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class BatchStats:
    calls: int = 0
    batches: int = 0
    largest: int = 0

    def as_dict(self) -> dict:
        mean = self.calls / self.batches if self.batches else 0.0
        return {"requests": self.calls, "batches": self.batches, "mean_batch": round(mean, 2),
                "largest_batch": self.largest}


class FeatureBatcher:
    """Thread-safe ``__call__(x) -> dict`` that batches concurrent calls into one ``forward``."""

    def __init__(self, forward: Forward, max_batch: int = 8, wait_ms: float = 5.0, name: str = "backbone") -> None:
        self._forward = forward
        self._max_batch = max(1, max_batch)
        self._wait = max(0.0, wait_ms) / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._name = name
        self.stats = BatchStats()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._closed:
            raise RuntimeError("the model runtime is shut down")
        self._ensure_thread()
        fut: Future = Future()
        self._queue.put((x, fut))
        return fut.result()

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(target=self._loop, name=f"{self._name}-batcher", daemon=True)
                t.start()
                self._thread = t

    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self._wait
        while len(batch) < self._max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        from lib.server.http_app import lower_thread_priority

        lower_thread_priority(10)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            groups: dict[tuple, list[tuple]] = {}
            for item in batch:
                groups.setdefault((tuple(item[0].shape[1:]), item[0].dtype), []).append(item)
            for items in groups.values():
                self._run(items)
            if stop:
                return

    def _run(self, items: list[tuple]) -> None:
        sizes = [int(x.shape[0]) for x, _ in items]
        try:
            with torch.inference_mode():
                out = self._forward(torch.cat([x for x, _ in items], 0) if len(items) > 1 else items[0][0])
            self.stats.calls += len(items)
            self.stats.batches += 1
            self.stats.largest = max(self.stats.largest, len(items))
            start = 0
            for (_, fut), n in zip(items, sizes):
                fut.set_result({k: v[start:start + n] for k, v in out.items()})
                start += n
        except BaseException as exc:  # noqa: BLE001 - every waiter must get the failure, never hang
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
