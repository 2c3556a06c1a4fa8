"""One Ray Serve deployment per model.

* ``Classifier``: ``@serve.batch`` dynamic batching, one ORT run per batch; batch size and wait are
  tunable at run time through ``reconfigure`` (``user_config`` in the serve config).
* ``Translator`` and ``Captioner``: each replica runs a ``DecodeEngine`` (iteration-level batching of greedy,
  beam and streamed sequences in one batch; encoder pass once per request at admission); its batch width, queue
  bound and queue-time budget are ``user_config`` too.

Options that are not model code (``max_ongoing_requests``, ``max_queued_requests``, ``num_gpus``) live in
``deploy/serve_config.yaml``; the decorators' values are the defaults when the classes are bound directly.
``stats()`` reports a replica's live settings and load (tests, operators).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from pathlib import Path

import numpy as np
from ray import serve

from models.data.tokenizer import Tokenizer
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, QueueFull, Sequence, StepFailed
from service.metrics import metrics
from service.runtime import EncoderDecoderRuntime, RuntimeOptions, create_session, load_config


class DeadlineExceeded(Exception):
    """The request's deadline passed before it finished."""


class DecodingFailed(Exception):
    """A decoder or encoder run failed for this request (not for its batch-mates, which are answered)."""


class Overloaded(Exception):
    """The model cannot take the request now (queue full, or it would wait too long for a slot). ``busy``: because
    no slot is expected soon (worth shedding the next requests at the door), not because of this request's size."""

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


@dataclasses.dataclass(frozen=True)
class Refused:
    """What a model method returns instead of raising when it refuses a request (``refusing``).

    Under overload most requests are refused; an exception crossing a Serve call is pickled with its traceback and
    logged as an error by the replica and the caller, which cost ~10 ms of CPU per refusal here (RELIABILITY.md)
    and slowed the admitted requests down. A returned value costs what any small answer costs.
    """

    kind: str  # "overloaded" | "deadline" | "failed"
    message: str
    busy: bool = False  # overloaded: see Overloaded

    def exception(self) -> Exception:
        if self.kind == "failed":
            return DecodingFailed(self.message)
        return Overloaded(self.message, self.busy) if self.kind == "overloaded" else DeadlineExceeded(self.message)


def refusing(method):
    """Turn a model method's ``Overloaded`` / ``DeadlineExceeded`` into a returned ``Refused``."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except Overloaded as e:
            return Refused("overloaded", str(e), e.busy)
        except DeadlineExceeded as e:
            return Refused("deadline", str(e))
        except StepFailed as e:
            return Refused("failed", str(e))

    return wrapper


def replica_runtime_options() -> RuntimeOptions:
    """ONNX Runtime's threads for this replica: as many as the CPUs Ray gave it (``ray_actor_options.num_cpus``,
    at least one), not one per core of the machine.

    ONNX Runtime's default, a thread per physical core, assumes the session has the machine to itself. A replica
    shares it with the other replicas, the proxy and the ingress, and a parallel section waits for its slowest
    thread: under load a descheduled thread stalls every step. Measured here (2 CPUs, 256-token translation, one
    other busy process): one thread 98 ms, two threads 273 ms (RELIABILITY.md, overload).
    """
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not in a Ray worker (a direct construction in a script)
        cpus = 1.0
    return RuntimeOptions(intra_op_threads=max(1, int(cpus)))


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5})
class Classifier:
    def __init__(self, repository: str) -> None:
        directory = Path(repository) / "classifier" / "1"
        self.config = load_config(directory)
        self.session = create_session(directory / "model.onnx", replica_runtime_options())
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
    """Shared by the translator and captioner deployments: one ``DecodeEngine`` decodes greedy, beam and streamed
    requests together."""

    name = ""

    def __init__(self, repository: str, max_batch: int = 32, max_queue: int = 1024) -> None:
        self.directory = Path(repository) / self.name / "1"
        self.runtime = EncoderDecoderRuntime(self.directory, replica_runtime_options())
        self.tokenizer = Tokenizer.load(self.directory)
        self.engine = DecodeEngine(self.runtime, EngineOptions(max_batch=max_batch, max_queue=max_queue)).start()

    async def reconfigure(self, user_config: dict) -> None:
        """``user_config``: max_batch_size, max_queue (rows), max_queue_wait_ms (the queue-time budget of a request
        without a deadline of its own) and auto_width (the width where tokens/s stop rising, measured at start;
        false: max_batch_size). Applied at the engine's next step; a changed width rule or max_batch_size
        recalibrates there, and this returns only then: Serve calls it before the replica takes requests, so the
        first request never waits behind the calibration (1-3 s on two vCPUs; the replicas of one machine
        calibrate in turn)."""
        known = {"max_batch_size", "max_queue", "max_queue_wait_ms", "auto_width"}
        if unknown := set(user_config) - known:
            raise ValueError(f"{self.name} user_config: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        defaults = EngineOptions()
        options = dataclasses.replace(
            self.engine.options, max_batch=int(user_config.get("max_batch_size", defaults.max_batch)),
            max_queue=int(user_config.get("max_queue", defaults.max_queue)),
            max_queue_wait_s=float(user_config.get("max_queue_wait_ms", defaults.max_queue_wait_s * 1000)) / 1000.0,
            auto_width=bool(user_config.get("auto_width", defaults.auto_width)))  # validated by EngineOptions
        await asyncio.to_thread(self.engine.configure, options)  # off the event loop: requests keep flowing

    def stats(self) -> dict:
        active, waiting = self.engine.load
        options = self.engine.options
        return {"pid": os.getpid(), "max_batch_size": options.max_batch, "max_queue": options.max_queue,
                "max_queue_wait_ms": options.max_queue_wait_s * 1000, "auto_width": options.auto_width,
                "batch_limit": self.engine.batch_limit, "step_times": self.engine.step_times,
                "max_new_tokens_limit": self.engine.max_positions,
                "active": active, "waiting": waiting, "finished": dict(self.engine.finished)}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()

    def _sequence(self, source: np.ndarray, options: DecodingOptions, deadline: float | None, on_token=None) -> Sequence:
        return Sequence(source, options.max_new_tokens, deadline=deadline, on_token=on_token,
                        beam_size=options.beam_size, length_penalty=options.length_penalty)

    async def _generate(self, sources: list[np.ndarray], options: DecodingOptions, deadline: float | None) -> list[list[int]]:
        seqs = [self._sequence(source, options, deadline) for source in sources]
        try:
            self.engine.submit_all(seqs)
        except QueueFull as e:
            raise Overloaded(str(e), e.reason == "expected_wait") from None
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(s.future) for s in seqs))
        except asyncio.CancelledError:  # the client went away: free the sequences
            for s in seqs:
                s.cancel()
            raise
        except StepFailed:
            for s in seqs:
                s.cancel()
            raise
        if any(s.finish_reason == "rejected" for s in seqs):
            raise Overloaded(f"waited over {self.engine.options.max_queue_wait_s * 1e3:.0f} ms for a place in the batch", busy=True)
        if any(s.finish_reason == "deadline" for s in seqs):
            raise DeadlineExceeded(f"{self.name} did not finish before the request deadline")
        return results

    def ready(self) -> bool:
        return self.engine.thread is not None and self.engine.thread.is_alive()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class Translator(_Generator):
    name = "translator"

    def _source(self, text: str) -> np.ndarray:
        max_src = self.runtime.config["encoder"]["max_source_tokens"]
        return np.array(self.tokenizer.encode(text)[: max_src - 1] + [self.tokenizer.eos_id], dtype=np.int64)

    @refusing
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
        seq = self._sequence(self._source(text), DecodingOptions(max_new_tokens=max_new_tokens), deadline_from_ms(timeout_ms), put)
        seq.future.add_done_callback(lambda _: put(None))  # after the last token: same thread, FIFO
        try:
            self.engine.submit(seq)
        except QueueFull as e:
            yield Refused("overloaded", str(e), e.reason == "expected_wait")  # the ingress turns a first item like this into its 503
            return
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
            if seq.finish_reason == "rejected":  # before any token
                yield Refused("overloaded", f"waited over {self.engine.options.max_queue_wait_s * 1e3:.0f} ms for a place in the batch", True)
                return
            if seq.finish_reason == "deadline":
                if not tokens:
                    yield Refused("deadline", "translator did not finish before the request deadline")
                    return
                raise DeadlineExceeded("translator did not finish before the request deadline")
            if seq.finish_reason in ("error", "cancelled"):
                raise RuntimeError(seq.error or f"decoding ended: {seq.finish_reason}")
            final = self.tokenizer.decode(tokens)
            if final[len(shown):]:
                yield {"token": final[len(shown):]}
            yield {"done": True, "translation": final, "tokens": len(tokens)}
        finally:
            seq.cancel()  # a no-op once finished; otherwise frees the row at the next step


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class Captioner(_Generator):
    name = "captioner"

    @refusing
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
