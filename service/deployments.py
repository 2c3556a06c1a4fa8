"""One Ray Serve deployment per model.

* ``Classifier``: ``@serve.batch`` dynamic batching, one ORT run per batch; batch size and wait are
  tunable at run time through ``reconfigure`` (``user_config`` in the serve config).
* ``Translator`` and ``Captioner``: each replica runs a ``DecodeEngine`` (iteration-level batching; encoder
  pass once per request at admission). Beam search (``beam_size > 1``) runs per request in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from ray import serve

from models.data.tokenizer import Tokenizer
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, QueueFull, Sequence
from service.metrics import metrics
from service.runtime import EncoderDecoderRuntime, create_session, load_config


class DeadlineExceeded(Exception):
    """The request's deadline passed before it finished."""


class Overloaded(Exception):
    """The model's queue is full."""


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class Classifier:
    def __init__(self, repository: str) -> None:
        directory = Path(repository) / "classifier" / "1"
        self.config = load_config(directory)
        self.session = create_session(directory / "model.onnx")
        self.labels = self.config["labels"]

    def reconfigure(self, user_config: dict) -> None:
        self._run.set_max_batch_size(int(user_config.get("max_batch_size", 64)))
        self._run.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.005)))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _run(self, items: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
        started = time.monotonic()
        m = metrics()
        for _, queued_at in items:
            m.observe("inference_queue_duration_seconds", started - queued_at, model="classifier")
        logits = self.session.run(None, {"images": np.stack([img for img, _ in items]).astype(np.float32)})[0]  # (N, 10)
        m.observe("inference_compute_duration_seconds", time.monotonic() - started, model="classifier", stage="batch")
        m.observe("inference_batch_size", len(items), model="classifier", stage="batch")
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return list(probs)

    async def classify(self, images: list[np.ndarray], top_k: int) -> list[list[dict]]:
        now = time.monotonic()
        probs = await asyncio.gather(*(self._run((image, now)) for image in images))
        out = []
        for p in probs:
            order = np.argsort(-p)[:top_k]
            out.append([{"label": self.labels[i], "score": float(p[i])} for i in order])
        return out

    def ready(self) -> bool:
        return self.session.run(None, {"images": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)


class _Generator:
    """Shared by the translator and captioner deployments: engine for greedy, thread for beams."""

    name = ""

    def __init__(self, repository: str, max_batch: int = 32, max_queue: int = 256) -> None:
        self.directory = Path(repository) / self.name / "1"
        self.runtime = EncoderDecoderRuntime(self.directory)
        self.tokenizer = Tokenizer.load(self.directory)
        self.engine = DecodeEngine(self.runtime, EngineOptions(max_batch=max_batch, max_queue=max_queue)).start()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()

    async def _generate(self, sources: list[np.ndarray], options: DecodingOptions, deadline: float | None) -> list[list[int]]:
        if options.beam_size > 1:
            return [await asyncio.to_thread(self._beam, s, options) for s in sources]
        seqs = []
        try:
            for source in sources:
                seqs.append(self.engine.submit(Sequence(source, options.max_new_tokens, deadline=deadline)))
        except QueueFull as e:
            for s in seqs:
                s.cancel()
            raise Overloaded(str(e)) from None
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(s.future) for s in seqs))
        except asyncio.CancelledError:  # the client went away: free the sequences
            for s in seqs:
                s.cancel()
            raise
        if any(s.finish_reason == "deadline" for s in seqs):
            raise DeadlineExceeded(f"{self.name} did not finish before the request deadline")
        return results

    def _beam(self, source: np.ndarray, options: DecodingOptions) -> list[int]:
        batch = source[None]
        mask = batch != self.tokenizer.pad_id if batch.dtype == np.int64 else None
        return self.runtime.generate(batch, mask, options)[0]

    def ready(self) -> bool:
        return self.engine.thread is not None and self.engine.thread.is_alive()


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class Translator(_Generator):
    name = "translator"

    async def translate(self, texts: list[str], options: DecodingOptions, timeout_ms: float | None = None) -> dict:
        eos = self.tokenizer.eos_id
        max_src = self.runtime.config["encoder"]["max_source_tokens"]
        sources = [np.array(self.tokenizer.encode(t)[: max_src - 1] + [eos], dtype=np.int64) for t in texts]
        outputs = await self._generate(sources, options, deadline_from_ms(timeout_ms))
        return {"translations": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class Captioner(_Generator):
    name = "captioner"

    async def caption(self, images: list[np.ndarray], options: DecodingOptions, timeout_ms: float | None = None) -> dict:
        outputs = await self._generate(images, options, deadline_from_ms(timeout_ms))
        return {"captions": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}


def deadline_from_ms(timeout_ms: float | None) -> float | None:
    """The deadline travels as a duration (clocks differ between nodes) and becomes a local instant here."""
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
