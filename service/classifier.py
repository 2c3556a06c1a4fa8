"""The classifier in the serving process: dynamic batching of whole requests into one ONNX Runtime run.

A request's images arrive as one ``(N, 1, S, S)`` array (``service.contract``) and stay one queue item. The batcher
takes items in arrival order until ``max_batch_size`` images (or the first item alone, if it is larger), waiting at
most ``batch_wait_timeout_s`` after the first for more, and runs them as one batch on its own thread, so the event
loop keeps taking requests meanwhile; the next batch forms while one runs. More than ``max_queue`` images waiting:
503 at once (``inference_rejected_total{reason="queue_full"}``); a deadline that passes while waiting: 504, and
the request's images leave the queue unrun.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from service import errors
from service.contract import ClassifyJob
from service.metrics import metrics
from service.providers import CUDA, provider_problem, warm_up
from service.runtime import RuntimeOptions, create_session, load_config


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    max_batch_size: int = 64  # images in one ONNX Runtime run
    batch_wait_timeout_s: float = 0.005  # how long the first waiting request waits for others to join it
    max_queue: int = 2048  # images waiting beyond this are refused at once (503)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0 or self.max_queue < 1:
            raise ValueError(f"classifier settings out of range: {self}")

    @classmethod
    def from_user_config(cls, user_config: dict) -> "BatchOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(user_config) - known:
            raise ValueError(f"classifier user_config: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in user_config.items()})


class _Item:
    __slots__ = ("images", "future", "queued_at")

    def __init__(self, images: np.ndarray, future: asyncio.Future) -> None:
        self.images, self.future, self.queued_at = images, future, time.monotonic()


class ClassifierHost:
    """One classification model (the shipped digit classifier, or an imported checkpoint named ``name``)."""

    def __init__(self, directory: Path, runtime_options: RuntimeOptions, name: str = "classifier") -> None:
        self.name = name
        self.config = load_config(directory)
        self.input_shape = tuple(self.config["inputs"]["images"]["shape"][1:])  # (C, H, W)
        self.session = create_session(directory / "model.onnx", runtime_options)
        self.labels = list(self.config["labels"])
        self.options = BatchOptions()
        self.largest_batch = 0  # images, since the last reconfigure
        self._queue: collections.deque[_Item] = collections.deque()
        self._waiting = 0  # images in the queue
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="classifier")

    def reconfigure(self, user_config: dict) -> None:
        self.options, self.largest_batch = BatchOptions.from_user_config(user_config), 0
        if self.provider == CUDA:  # each batch size's first run plans its kernels: not on a request's time
            warm_up(lambda b: self.session.run(None, {"images": np.zeros((b, *self.input_shape), np.float32)}),
                    self.options.max_batch_size)

    def stats(self) -> dict:
        return {"pid": os.getpid(), **dataclasses.asdict(self.options), "largest_batch": self.largest_batch,
                "waiting": self._waiting}

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def provider_problem(self) -> str | None:
        return provider_problem(self.session)

    def ready(self) -> bool:
        if self.provider_problem is not None:
            return False
        return self.session.run(None, {"images": np.zeros((1, *self.input_shape), np.float32)})[0].shape == (1, len(self.labels))

    async def probabilities(self, job: ClassifyJob) -> np.ndarray:
        """``(N, classes)`` float32, in label order."""
        n = len(job.images)
        if self._waiting + n > self.options.max_queue:
            metrics().inc("inference_rejected_total", model=self.name, reason="queue_full")
            raise errors.overloaded(f"{self.name}: {self._waiting} images waiting, the limit is {self.options.max_queue}")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._batches())
        item = _Item(job.images, loop.create_future())
        self._queue.append(item)
        self._waiting += n
        self._wakeup.set()
        left = None if job.deadline is None else job.deadline.left_s()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), left) if left is not None else await item.future
        except (asyncio.TimeoutError, TimeoutError):
            raise errors.deadline() from None
        finally:
            if not item.future.done():  # deadline or the client went away: it leaves the queue unrun
                item.future.cancel()

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._queue[0]
            wait = first.queued_at + self.options.batch_wait_timeout_s - time.monotonic()
            if self._waiting < self.options.max_batch_size and wait > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)  # someone joined: look again
                except (asyncio.TimeoutError, TimeoutError):
                    pass
                if self._waiting < self.options.max_batch_size and time.monotonic() < first.queued_at + self.options.batch_wait_timeout_s:
                    continue
            batch, images = [], 0
            while self._queue and (not batch or images + len(self._queue[0].images) <= self.options.max_batch_size):
                item = self._queue.popleft()
                self._waiting -= len(item.images)
                if item.future.done():  # cancelled while waiting
                    continue
                batch.append(item)
                images += len(item.images)
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop, batch: list[_Item]) -> None:
        started, m = time.monotonic(), metrics()
        for item in batch:
            m.observe("inference_queue_duration_seconds", started - item.queued_at, model=self.name)
        stacked = batch[0].images if len(batch) == 1 else np.concatenate([item.images for item in batch])
        try:
            probs = await loop.run_in_executor(self._executor, self._probabilities, stacked)
        except Exception as e:  # noqa: BLE001 - a failed run fails its requests, not the batcher
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(errors.failed(f"{self.name}: {e.__class__.__name__}: {e}"))
            return
        m.observe("inference_compute_duration_seconds", time.monotonic() - started, model=self.name, stage="batch")
        m.observe("inference_batch_size", len(stacked), model=self.name, stage="batch")
        self.largest_batch = max(self.largest_batch, len(stacked))
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(probs[start : start + len(item.images)])
            start += len(item.images)

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"images": images})[0]  # (N, classes)
        logits = logits - logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
