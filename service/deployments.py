"""One Ray Serve deployment per model.

* ``Classifier``: ``@serve.batch`` dynamic batching, one ORT run per batch; batch size and wait are
  tunable at run time through ``reconfigure`` (``user_config`` in the serve config).
* ``Translator`` and ``Captioner``: each replica runs a ``DecodeEngine`` (iteration-level batching; encoder
  pass once per request at admission); its batch width and queue bound are ``user_config`` too. Beam search
  (``beam_size > 1``) runs per request in a worker thread.

Options that are not model code (``max_ongoing_requests``, ``max_queued_requests``, ``num_gpus``) live in
``deploy/serve_config.yaml``; the decorators' values are the defaults when the classes are bound directly.
``stats()`` reports a replica's live settings and load (tests, operators).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
from ray import serve

from models.data.tokenizer import Tokenizer
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, QueueFull, Sequence
from service.metrics import metrics
from service.runtime import EncoderDecoderRuntime, Interrupted, create_session, load_config


class DeadlineExceeded(Exception):
    """The request's deadline passed before it finished."""


class Overloaded(Exception):
    """The model's queue is full."""


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5})
class Classifier:
    def __init__(self, repository: str) -> None:
        directory = Path(repository) / "classifier" / "1"
        self.config = load_config(directory)
        self.session = create_session(directory / "model.onnx")
        self.labels = self.config["labels"]
        self.settings = {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}
        self.largest_batch = 0  # since the last reconfigure

    def reconfigure(self, user_config: dict) -> None:
        settings = {"max_batch_size": int(user_config.get("max_batch_size", 64)),
                    "batch_wait_timeout_s": float(user_config.get("batch_wait_timeout_s", 0.005))}
        if settings["max_batch_size"] < 1 or settings["batch_wait_timeout_s"] < 0:
            raise ValueError(f"classifier user_config out of range: {settings}")
        self._run.set_max_batch_size(settings["max_batch_size"])
        self._run.set_batch_wait_timeout_s(settings["batch_wait_timeout_s"])
        self.settings, self.largest_batch = settings, 0

    def stats(self) -> dict:
        return {"pid": os.getpid(), **self.settings, "largest_batch": self.largest_batch}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _run(self, items: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
        started = time.monotonic()
        m = metrics()
        for _, queued_at in items:
            m.observe("inference_queue_duration_seconds", started - queued_at, model="classifier")
        logits = self.session.run(None, {"images": np.stack([img for img, _ in items]).astype(np.float32)})[0]  # (N, 10)
        m.observe("inference_compute_duration_seconds", time.monotonic() - started, model="classifier", stage="batch")
        m.observe("inference_batch_size", len(items), model="classifier", stage="batch")
        self.largest_batch = max(self.largest_batch, len(items))
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return list(probs)

    async def scores(self, images: list[np.ndarray]) -> dict:
        """Every class's probability, in label order: the ingress ranks them (task API) or returns them (OIP)."""
        now = time.monotonic()
        probs = await asyncio.gather(*(self._run((image, now)) for image in images))
        return {"labels": list(self.labels), "probabilities": np.stack(probs).astype(np.float32)}

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
        self.beams_running, self._beam_lock = 0, threading.Lock()

    def reconfigure(self, user_config: dict) -> None:
        options = dataclasses.replace(self.engine.options, max_batch=int(user_config.get("max_batch_size", 32)),
                                      max_queue=int(user_config.get("max_queue", 256)))
        if options.max_batch < 1 or options.max_queue < 0:
            raise ValueError(f"{self.name} user_config out of range: {user_config}")
        self.engine.options = options  # read by the loop at the next step

    def stats(self) -> dict:
        active, waiting = self.engine.load
        return {"pid": os.getpid(), "max_batch_size": self.engine.options.max_batch,
                "max_queue": self.engine.options.max_queue, "active": active, "waiting": waiting,
                "finished": dict(self.engine.finished), "beams_running": self.beams_running}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()

    async def _generate(self, sources: list[np.ndarray], options: DecodingOptions, deadline: float | None) -> list[list[int]]:
        if options.beam_size > 1:
            stop = threading.Event()  # set when the caller goes away; the search checks it before every step
            interrupted = lambda: stop.is_set() or (deadline is not None and time.monotonic() > deadline)
            try:
                return [await asyncio.to_thread(self._beam, s, options, interrupted) for s in sources]
            except Interrupted:
                raise DeadlineExceeded(f"{self.name} did not finish before the request deadline") from None
            finally:
                stop.set()
        seqs = [Sequence(source, options.max_new_tokens, deadline=deadline) for source in sources]
        try:
            self.engine.submit_all(seqs)
        except QueueFull as e:
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

    def _beam(self, source: np.ndarray, options: DecodingOptions, interrupted) -> list[int]:
        batch = source[None]
        mask = batch != self.tokenizer.pad_id if batch.dtype == np.int64 else None
        with self._beam_lock:
            self.beams_running += 1
        try:
            return self.runtime.generate(batch, mask, options, interrupted)[0]
        finally:
            with self._beam_lock:
                self.beams_running -= 1

    def ready(self) -> bool:
        return self.engine.thread is not None and self.engine.thread.is_alive()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class Translator(_Generator):
    name = "translator"

    def _source(self, text: str) -> np.ndarray:
        max_src = self.runtime.config["encoder"]["max_source_tokens"]
        return np.array(self.tokenizer.encode(text)[: max_src - 1] + [self.tokenizer.eos_id], dtype=np.int64)

    async def translate(self, texts: list[str], options: DecodingOptions, timeout_ms: float | None = None,
                        return_attention: bool = False) -> dict:
        sources = [self._source(t) for t in texts]
        outputs = await self._generate(sources, options, deadline_from_ms(timeout_ms))
        result = {"translations": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}
        if return_attention:
            batch = np.zeros((len(sources), max(map(len, sources))), dtype=np.int64)  # pad id 0
            for i, src in enumerate(sources):
                batch[i, : len(src)] = src
            maps = await asyncio.to_thread(self.runtime.cross_attention, batch, batch != self.tokenizer.pad_id, outputs)
            result["attention"] = [
                {"target_tokens": self.tokenizer.pieces(o), "source_tokens": self.tokenizer.pieces(src.tolist()),
                 "weights": m.round(5).tolist()}
                for o, src, m in zip(outputs, sources, maps)]
        return result

    async def translate_stream(self, text: str, max_new_tokens: int, timeout_ms: float | None = None):
        """Yield ``{"token": str}`` as the decode loop produces each token, then ``{"done": True, ...}``.

        The sequence runs in the shared iteration-level loop; the engine thread hands each token over through
        the event loop. If the caller goes away (the generator is closed or cancelled) the sequence is cancelled
        and leaves the loop at the next step.
        """
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)
        seq = Sequence(self._source(text), max_new_tokens, deadline=deadline_from_ms(timeout_ms), on_token=put)
        seq.future.add_done_callback(lambda _: put(None))  # after the last token: same thread, FIFO
        try:
            self.engine.submit(seq)
        except QueueFull as e:
            raise Overloaded(str(e)) from None
        try:
            tokens, shown = [], ""
            while (token := await queue.get()) is not None:
                tokens.append(token)
                text_so_far = self.tokenizer.decode(tokens)
                if text_so_far.endswith("\ufffd") or not text_so_far.startswith(shown):
                    continue  # an incomplete UTF-8 byte sequence (byte fallback): wait for the rest
                piece, shown = text_so_far[len(shown):], text_so_far
                if piece:
                    yield {"token": piece}
            if seq.finish_reason == "deadline":
                raise DeadlineExceeded("translator did not finish before the request deadline")
            if seq.finish_reason in ("error", "cancelled"):
                raise RuntimeError(f"decoding ended: {seq.finish_reason}")
            final = self.tokenizer.decode(tokens)
            if final[len(shown):]:
                yield {"token": final[len(shown):]}
            yield {"done": True, "translation": final, "tokens": len(tokens)}
        finally:
            seq.cancel()  # a no-op once finished; otherwise frees the row at the next step


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class Captioner(_Generator):
    name = "captioner"

    async def caption(self, images: list[np.ndarray], options: DecodingOptions, timeout_ms: float | None = None,
                      return_attention: bool = False) -> dict:
        outputs = await self._generate(images, options, deadline_from_ms(timeout_ms))
        result = {"captions": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}
        if return_attention:
            maps = await asyncio.to_thread(self.runtime.cross_attention, np.stack(images).astype(np.float32), None, outputs)
            encoder = self.runtime.config["encoder"]
            grid = [encoder.get("grid", encoder["image_size"] // encoder["patch_size"])] * 2
            result["attention"] = [{"target_tokens": self.tokenizer.pieces(o), "grid": grid, "weights": m.round(5).tolist()}
                                   for o, m in zip(outputs, maps)]
        return result


def deadline_from_ms(timeout_ms: float | None) -> float | None:
    """The deadline travels as a duration (clocks differ between nodes) and becomes a local instant here."""
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
