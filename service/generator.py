"""The translator and the captioner in the serving process: each a ``DecodeEngine`` that decodes greedy, beam and
streamed requests together (iteration-level batching), fed validated jobs (``service.contract``).

The engine's own admission answers: a request it cannot place within its budget is refused at ``submit``, in the
caller's thread, before anything runs (503, ``errors.overloaded``); one whose deadline passes is answered 504; a
model run that fails for one request fails only that request (500 ``decoding_failed``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import numpy as np

from service import errors
from service.contract import CaptionJob, TranslateJob
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, QueueFull, Sequence, StepFailed
from service.providers import CUDA, warm_up
from service.runtime import EncoderDecoderRuntime, RuntimeOptions
from service.tokenizers import load_tokenizer


class GeneratorHost:
    name = ""

    def __init__(self, directory: Path, runtime_options: RuntimeOptions, options: EngineOptions = EngineOptions(),
                 name: str | None = None) -> None:
        self.name = name or self.name  # an imported model's own name; the shipped ones keep the class's
        self.directory = directory
        self.runtime = EncoderDecoderRuntime(directory, runtime_options)
        self.tokenizer = load_tokenizer(directory, self.runtime.config)
        generation = self.runtime.config.get("generation", {})
        options = dataclasses.replace(options, stop_on_repetition=generation.get("stop_on_repetition", True),
                                      beam_rule=generation.get("beam_rule", "engine"))
        self.engine = DecodeEngine(self.runtime, options).start()

    def reconfigure(self, user_config: dict) -> None:
        """``user_config``: max_batch_size, max_queue (rows), max_queue_wait_ms (the queue-time budget of a request
        without a deadline of its own), auto_width (measure at start the width where tokens/s stop rising;
        false: max_batch_size), decode_nice (``EngineOptions.decode_nice``) and ignore_eos (benchmarks and tests only:
        ``EngineOptions.ignore_eos``). Applied at the engine's next step; a changed width rule or max_batch_size
        recalibrates there, and this returns only then (call it off the event loop)."""
        known = {"max_batch_size", "max_queue", "max_queue_wait_ms", "auto_width", "decode_nice", "ignore_eos"}
        if unknown := set(user_config) - known:
            raise ValueError(f"{self.name} user_config: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        defaults = EngineOptions()
        options = dataclasses.replace(
            self.engine.options, max_batch=int(user_config.get("max_batch_size", defaults.max_batch)),
            max_queue=int(user_config.get("max_queue", defaults.max_queue)),
            max_queue_wait_s=float(user_config.get("max_queue_wait_ms", defaults.max_queue_wait_s * 1000)) / 1000.0,
            auto_width=bool(user_config.get("auto_width", defaults.auto_width)),  # validated by EngineOptions
            decode_nice=int(user_config.get("decode_nice", defaults.decode_nice)),
            ignore_eos=bool(user_config.get("ignore_eos", defaults.ignore_eos)))
        if self.provider == CUDA and not self.runtime.config.get("encoder", {}).get("input") == "input_ids":
            # the captioner's encoder (ViT: a patch convolution) at each batch size, once, before requests
            warm_up(lambda b: self.runtime.encode(self.runtime.blank_images(b)), options.max_batch)
        self.engine.configure(options)

    def stats(self) -> dict:
        active, waiting = self.engine.load
        options = self.engine.options
        return {"pid": os.getpid(), "max_batch_size": options.max_batch, "max_queue": options.max_queue,
                "max_queue_wait_ms": options.max_queue_wait_s * 1000, "auto_width": options.auto_width,
                "ignore_eos": options.ignore_eos, "decode_nice": options.decode_nice, "nice": self.engine.nice,
                "batch_limit": self.engine.batch_limit, "step_times": self.engine.step_times,
                "loop_s_per_step": getattr(self.engine.loop_width, "host_s", None),
                "max_new_tokens_limit": self.engine.max_positions,
                "active": active, "waiting": waiting, "finished": dict(self.engine.finished)}

    def ready(self) -> bool:
        return self.provider_problem is None and self.engine.thread is not None and self.engine.thread.is_alive()

    @property
    def provider(self) -> str:
        return self.runtime.provider

    @property
    def provider_problem(self) -> str | None:
        return self.runtime.provider_problem()

    def stop(self) -> None:
        self.engine.stop()

    def _sequence(self, source, options: DecodingOptions, deadline, on_token=None) -> Sequence:
        return Sequence(source, options.max_new_tokens, deadline=None if deadline is None else deadline.at,
                        on_token=on_token, beam_size=options.beam_size, length_penalty=options.length_penalty)

    def _submit(self, seqs: list[Sequence]) -> None:
        try:
            self.engine.submit_all(seqs)
        except QueueFull as e:  # counted by the engine
            raise errors.overloaded(f"{self.name}: {e}") from None

    def _refusal(self, seq: Sequence) -> errors.ServiceError | None:
        if seq.finish_reason == "rejected":
            return errors.overloaded(f"{self.name}: waited over {self.engine.options.max_queue_wait_s * 1e3:.0f} ms "
                                     "for a place in the batch")
        if seq.finish_reason == "deadline":
            return errors.deadline(f"{self.name} did not finish before the request deadline")
        return None

    async def _generate(self, sources: list, options: DecodingOptions, deadline) -> list[list[int]]:
        seqs = [self._sequence(source, options, deadline) for source in sources]
        self._submit(seqs)
        waiting = asyncio.gather(*(asyncio.wrap_future(s.future) for s in seqs))
        try:
            # Answered at the deadline itself, not after the step running when it passes (a 16-wide step is tens of ms
            # on a CPU): the loop still drops the sequences at its next step boundary and counts them as "deadline".
            results = await asyncio.wait_for(waiting, None if deadline is None else max(0.0, deadline.left_s()))
        except TimeoutError:
            raise errors.deadline(f"{self.name} did not finish before the request deadline") from None
        except asyncio.CancelledError:  # the client went away: free the sequences
            for s in seqs:
                s.cancel()
            raise
        except StepFailed as e:
            for s in seqs:
                s.cancel()
            raise errors.failed(f"{self.name}: {e}") from None
        for s in seqs:
            if (refusal := self._refusal(s)) is not None:
                raise refusal
        return results


class TranslatorHost(GeneratorHost):
    name = "translator"

    def _source(self, text: str, where: str = "text") -> np.ndarray:
        """The encoder's input for ``text``; 413 for a text the encoder's positions cannot hold (within the
        contract's 512 characters, a text of digits or symbols can come to more tokens than the encoder reads, and
        cutting it would translate something other than what was sent)."""
        max_src = self.runtime.config["encoder"]["max_source_tokens"]
        ids = self.tokenizer.encode(text)
        if len(ids) > max_src - 1:
            raise errors.too_large("text_too_long", f"{where}: {len(ids)} tokens; {self.name} reads at most {max_src - 1}")
        return np.array(ids + [self.tokenizer.eos_id], dtype=np.int64)

    async def translate(self, job: TranslateJob) -> dict:
        """``{"translations", "tokens"}`` (+ ``"attention"``)."""
        sources = [self._source(t, f"texts[{i}]" if len(job.texts) > 1 else "text") for i, t in enumerate(job.texts)]
        outputs = await self._generate(sources, job.options, job.deadline)
        result = {"translations": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}
        if job.return_attention:
            batch = np.full((len(sources), max(map(len, sources))), self.tokenizer.pad_id, dtype=np.int64)
            for i, src in enumerate(sources):
                batch[i, : len(src)] = src
            maps = await asyncio.to_thread(self.runtime.cross_attention, batch, batch != self.tokenizer.pad_id, outputs)
            result["attention"] = [
                {"target_tokens": self.tokenizer.pieces(o), "source_tokens": self.tokenizer.pieces(src.tolist()),
                 "weights": m.round(5).tolist()}
                for o, src, m in zip(outputs, sources, maps)]
        return result

    async def stream(self, job: TranslateJob):
        """Yield ``{"token": str}`` as the engine produces each token, then ``{"done": True, "translation", "tokens"}``.

        A refusal (queue, budget, deadline before the first token) raises ``ServiceError`` from the first
        ``__anext__``, before anything is sent. If the caller goes away (the generator is closed or cancelled) the
        sequence is cancelled and leaves the batch at the next step.
        """
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        seq = self._sequence(self._source(job.texts[0]), job.options, job.deadline, put)
        seq.future.add_done_callback(lambda _: put(None))  # after the last token: same thread, FIFO
        self._submit([seq])
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
            if (refusal := self._refusal(seq)) is not None:
                raise refusal
            if seq.finish_reason in ("error", "cancelled"):
                raise errors.failed(f"{self.name}: {seq.error or 'decoding ended: ' + seq.finish_reason}")
            final = self.tokenizer.decode(tokens)
            if final[len(shown):]:
                yield {"token": final[len(shown):]}
            yield {"done": True, "translation": final, "tokens": len(tokens)}
        finally:
            seq.cancel()  # a no-op once finished; otherwise frees the row at the next step


class CaptionerHost(GeneratorHost):
    name = "captioner"

    async def caption(self, job: CaptionJob) -> dict:
        """``{"captions", "tokens"}`` (+ ``"attention"``)."""
        images = list(job.images)
        outputs = await self._generate(images, job.options, job.deadline)
        result = {"captions": [self.tokenizer.decode(o) for o in outputs], "tokens": [len(o) for o in outputs]}
        if job.return_attention:
            maps = await asyncio.to_thread(self.runtime.cross_attention, job.images, None, outputs)
            encoder = self.runtime.config["encoder"]
            grid = [encoder.get("grid", encoder["image_size"] // encoder["patch_size"])] * 2
            first = 1 if encoder.get("class_token") else 0  # an imported ViT's class token: not a patch of the grid
            result["attention"] = [{"target_tokens": self.tokenizer.pieces(o), "grid": grid, "weights": m[:, first:].round(5).tolist()}
                                   for o, m in zip(outputs, maps)]
        return result
