"""Iteration-level batching (Orca, Yu et al., OSDI 2022): one decode loop per decoder replica.

Requests do not wait for each other. Between two decoder steps the loop admits waiting sequences (their encoder
pass runs then, once, producing their cross-attention K/V) and retires every sequence that has finished, so a
short request that arrives while a long one decodes joins the running batch at the next step and leaves as soon as
it is done. Greedy sequences (one row), beam requests (``beam_size`` rows, reordered after each step) and streams
decode together in one batch, through one path.

``step`` is schedule → execute → update (vLLM's ``EngineCore.step``); the queue and admission are
``scheduler.Scheduler``, the rows and caches ``batch.KVBatch``, the width ``calibration``.

Generation is bounded by the model: a sequence never asks for more tokens than the decoder has positions
(``max_len``: the captioner 48, the translator 256); a larger ``max_new_tokens`` is clamped and the sequence
finishes with "length" there. A step that fails fails only the sequences it fails for: the loop runs each
sequence's rows alone to find them, fails those requests with the error, and carries on with the rest. A piece
repeated ``models.repetition.MAX_RUN`` times in a row ends a sequence ("repetition"), as it does offline.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from concurrent.futures import InvalidStateError

import numpy as np

from service.engine.batch import KVBatch
from service.engine.calibration import LoopWidth, choose_width, step_seconds
from service.engine.priority import lower_this_thread, niceness
from service.engine.scheduler import EngineOptions, QueueFull, Scheduler, Sequence
from models.repetition import runaway
from service.engine.search import BeamState, advance_all
from service.metrics import DECODER_STEP_SAMPLE, metrics
from service.runtime import EncoderDecoderRuntime

ENDED = ("eos", "length", "repetition")  # a sequence that decoded to its end (the scheduler learns lengths from these)
MAX_STEP_FAILURES = 3  # consecutive failed steps no single sequence explains before the whole batch is failed


class StepFailed(RuntimeError):
    """A decoder or encoder run failed for this sequence: only its request fails."""


class DecodeEngine:
    """The decode loop of one replica; thread-safe ``submit``; ``start`` / ``stop`` the loop thread."""

    def __init__(self, runtime: EncoderDecoderRuntime, options: EngineOptions = EngineOptions()) -> None:
        self.rt = runtime
        self.model = runtime.directory.parent.name  # the metrics' "model" label
        self.metrics = metrics()
        self._step_sampler = random.Random()
        special = runtime.config["special_tokens"]
        self.bos, self.eos, self.pad = special["bos"], special["eos"], special["pad"]
        self.max_positions = int(runtime.config["decoder"]["max_len"])  # tokens one sequence can decode at most
        self.text_source = runtime.config.get("encoder", {}).get("input", "input_ids") == "input_ids"
        self.lock = threading.Condition()
        self._calibration_done = threading.Condition(self.lock)
        self.scheduler = Scheduler(options)
        self.batch = KVBatch(runtime.layers, self.bos, upload=runtime.to_device, edit=runtime.edit_cache)
        self._options = options
        self.running, self.thread = False, None
        self.steps, self._failures = 0, 0
        self.finished: collections.Counter[str] = collections.Counter()  # sequences by finish reason, since start
        self.batch_limit = options.max_batch  # rows decoded together: max_batch, or the throughput width (calibrate)
        self.step_times: dict[int, float] = {}  # width → seconds of a step (last calibration)
        self.nice: int | None = None  # the decode thread's nice value, once it runs
        self.loop_width: LoopWidth | None = None  # re-chooses the width with the loop's own time a step (auto_width)
        self._decoder_s = 0.0  # the last step's decoder run
        self._calibrated_for: tuple | None = None

    # ---------------------------------------------------------------------------------- options
    @property
    def options(self) -> EngineOptions:
        return self._options

    @options.setter
    def options(self, options: EngineOptions) -> None:
        """New options take effect at the next step; a changed width rule or max_batch recalibrates there."""
        with self.lock:
            self._options = self.scheduler.options = options
            if not options.auto_width:
                self.batch_limit, self._calibrated_for, self.step_times = options.max_batch, None, {}
                self.loop_width = None
            self.lock.notify()
            self._calibration_done.notify_all()  # a configure() waiting for options now replaced returns (False)

    def configure(self, options: EngineOptions, timeout: float | None = None) -> bool:
        """Set ``options`` and return once they are in force (calibrated by the loop thread, between steps), so a
        replica configured here takes no request while it still measures. False if ``timeout`` passed first."""
        self.options = options
        if not options.auto_width:
            return True
        if self.thread is None:
            self._calibrate_if_needed()
            return self._calibrated_for == options.max_batch
        with self.lock:
            return self._calibration_done.wait_for(
                lambda: self._calibrated_for == options.max_batch or self._options is not options or not self.running,
                timeout) and self._calibrated_for == options.max_batch

    def _calibrate_if_needed(self) -> None:
        options = self.options
        if not options.auto_width or self._calibrated_for == options.max_batch:
            return
        def stale() -> bool:  # replaced while it waited or measured, or the engine stops: give up
            return options is not self._options or (self.thread is not None and not self.running)
        times = step_seconds(self.rt, options.max_batch, stale=stale)
        with self.lock:
            if times is None or options is not self._options:
                return  # changed while it ran: the next call measures for the new options
            self.step_times, self.batch_limit, self.loop_width = times, choose_width(times), LoopWidth(times)
            self.scheduler.step_s = times[self.batch_limit]
            self._calibrated_for = options.max_batch
            self._calibration_done.notify_all()

    # ---------------------------------------------------------------------------------- public API
    def submit(self, seq: Sequence) -> Sequence:
        return self.submit_all([seq])[0]

    def submit_all(self, seqs: list[Sequence]) -> list[Sequence]:
        """Queue one request's sequences together, or none of them (``QueueFull``)."""
        for seq in seqs:
            seq.max_new_tokens = max(1, min(seq.max_new_tokens, self.max_positions))  # bounded by the model
        with self.lock:
            try:
                self.scheduler.submit(seqs, self._live_rows(), self.batch_limit, time.monotonic())
            except QueueFull as e:
                self.metrics.inc("inference_rejected_total", model=self.model, reason=e.reason)
                raise
            self.lock.notify()
        return seqs

    def expected_wait(self, width: int = 1) -> float:
        with self.lock:
            return self.scheduler.expected_wait(width, self._live_rows(), self.batch_limit, time.monotonic())

    def _live_rows(self) -> int:
        now = time.monotonic()
        return sum(s.width for s in self.batch.sequences() if not s.gone(now))

    @property
    def waiting(self):
        return self.scheduler.waiting

    @property
    def active(self) -> list[Sequence]:
        """The sequences decoding, each once."""
        return self.batch.sequences()

    @property
    def load(self) -> tuple[int, int]:
        """(rows decoding, rows waiting); idle rows of finished sequences are not counted."""
        return (sum(s.finish_reason is None for s in self.batch.owner),
                sum(s.width for s in self.scheduler.waiting))

    def start(self) -> DecodeEngine:
        self._calibrate_if_needed()
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.running = False
            self.lock.notify()
            self._calibration_done.notify_all()
        if self.thread:
            self.thread.join()
        for seq in self.batch.sequences() + self.scheduler.clear():
            self._finish(seq, "cancelled")
        self.batch.clear()

    # ---------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        base, lowered_by = niceness(), None
        while True:
            self._calibrate_if_needed()  # after start or a reconfigure: between steps, never during one
            with self.lock:
                if self.running and not len(self.batch) and not self.scheduler.waiting:
                    self.lock.wait(self.options.idle_wait_s)
                    continue
                if not self.running:
                    return
            if base is not None and self.options.decode_nice != lowered_by:  # below the event loop (priority.py)
                lowered_by = self.options.decode_nice
                self.nice = lower_this_thread(base, lowered_by)
            try:
                self.step()
            except Exception as error:  # nothing a request sent explains it: fail the batch, keep the loop
                for seq in self.batch.sequences():
                    self._fail(seq, f"decoding failed: {error}")
                self.batch.clear()

    def step(self) -> None:
        """schedule → execute → update, once (also callable directly, without the loop thread)."""
        self._calibrate_if_needed()
        started = time.monotonic()
        self._schedule()
        if not len(self.batch):
            return
        top = self._execute()
        if top is not None:
            self._update(*top)
            self.steps += 1
            if len(self.batch) >= self.batch_limit:
                with self.lock:
                    self.scheduler.observed_step(took := time.monotonic() - started)
                    width = self.loop_width and self.loop_width.observe(took, self._decoder_s)
                    if width and width != self.batch_limit:  # the wait estimate's step from the new width's time
                        self.batch_limit, self.scheduler.step_s = width, self.loop_width.step_s(width)

    def _schedule(self) -> None:
        now = time.monotonic()
        dead = []  # rows whose sequence is done: refilled in place, or compacted away
        for seq in self.batch.sequences():
            if seq.cancelled:
                self._finish(seq, "cancelled")
            elif seq.deadline is not None and now > seq.deadline:
                self._finish(seq, "deadline")
        dead = [i for i, seq in enumerate(self.batch.owner) if seq.finish_reason is not None]
        with self.lock:
            room = self.batch_limit - (len(self.batch) - len(dead))
            if self.options.scheduling == "static" and len(self.batch) > len(dead):
                room = 0
            admitted, dropped = self.scheduler.admit(room, now, self.batch_limit)
        for seq, reason in dropped:
            if reason == "rejected" and seq is (seq.leader or seq):
                self.metrics.inc("inference_rejected_total", model=self.model, reason="queue_timeout")
            self._finish(seq, reason)
        placed = self._admit(admitted, dead) if admitted else 0
        leftover = dead[placed:]
        if leftover and 4 * len(leftover) >= len(self.batch):  # a quarter of the rows idle: compact the batch
            gone = set(leftover)
            self.batch.keep([i for i in range(len(self.batch)) if i not in gone])
        elif leftover or placed:
            # Fewer idle rows stay in place, masked out, for the next newcomers: compacting copies every cache, and
            # doing it whenever one sequence of a full batch finished was 6 % of a beam-4 batch's time.
            self.batch.idle(leftover)
            self.batch.trim()

    def _admit(self, seqs: list[Sequence], slots: list[int]) -> int:
        """Encode the newcomers together (cross K/V once, here) and give them rows; a source the encoder fails on
        fails only its own request. Returns how many of ``slots`` were taken."""
        started = time.monotonic()
        for seq in seqs:
            seq.admitted_at_step = self.steps  # (its rows are held from now: a failure below releases them)
            self.metrics.observe("inference_queue_duration_seconds", started - seq.submitted_at, model=self.model)
        try:
            cross, mask = self._encode(seqs)
        except Exception:
            ok = []
            for seq in seqs:  # find the ones it fails for
                try:
                    self._encode([seq])
                    ok.append(seq)
                except Exception as error:
                    self._fail(seq, f"the encoder failed on this input: {error}")
            seqs = ok
            if not seqs:
                return 0
            cross, mask = self._encode(seqs)
        self.metrics.observe("inference_compute_duration_seconds", time.monotonic() - started, model=self.model, stage="encoder")
        self.metrics.observe("inference_batch_size", len(seqs), model=self.model, stage="encoder")
        for seq in seqs:
            seq.search = (BeamState(seq.beam_size, self.eos, seq.length_penalty, ignore_eos=self.options.ignore_eos,
                                     guard=self.options.stop_on_repetition,
                                     eos_in_top_k=self.options.beam_rule == "transformers")
                          if seq.beam_size > 1 else None)
        taken = min(len(slots), sum(s.width for s in seqs))
        self.batch.place(seqs, cross, mask, slots[:taken])
        return taken

    def _encode(self, seqs: list[Sequence]):
        if self.text_source:
            src = np.full((len(seqs), max(len(s.source) for s in seqs)), self.pad, dtype=np.int64)
            for i, s in enumerate(seqs):
                src[i, : len(s.source)] = s.source
            return self.rt.encode(src, src != self.pad)
        return self.rt.encode(np.stack([s.source for s in seqs]).astype(np.float32), None)

    def _candidates(self) -> int:
        """Next-token candidates each row needs this step: 1 (greedy), or 2K for the widest beam request."""
        return max((2 * s.beam_size for s in self.batch.sequences() if s.search is not None),
                   default=2 if self.options.ignore_eos else 1)

    def _execute(self) -> tuple[np.ndarray, np.ndarray] | None:
        """One decoder step for the whole batch → each row's best next tokens and their log-probabilities, best
        first ``(B, c)``; None if it failed (the sequences it failed for are failed, the rest step again next time)."""
        feed, self_mask = self.batch.feed(top_k=self._candidates())
        started = time.monotonic()
        try:
            top_ids, top_logp, present = self.rt.run_step(feed)
        except Exception as error:
            self._isolate(error)
            return None
        self._decoder_s = took = time.monotonic() - started
        self._failures = 0
        if self._step_sampler.random() * DECODER_STEP_SAMPLE < 1:
            self.metrics.observe("inference_compute_duration_seconds", took, model=self.model, stage="decoder_step")
            self.metrics.observe("inference_batch_size", len(self.batch), model=self.model, stage="decoder_step")
        self.batch.advanced(present, self_mask)
        return top_ids, top_logp

    def _isolate(self, error: Exception) -> None:
        """A batch step failed: run each sequence's rows alone and fail the sequences that fail alone."""
        blamed = 0
        for seq in self.batch.sequences():
            if seq.finish_reason is not None:
                continue
            try:
                self.rt.run_step(self.batch.feed(np.asarray(seq.rows))[0])
            except Exception as alone:
                self._fail(seq, f"a decoding step failed for this request: {alone}")
                blamed += 1
        self._failures = 0 if blamed else self._failures + 1
        if self._failures >= MAX_STEP_FAILURES:
            self._failures = 0
            raise RuntimeError(f"{MAX_STEP_FAILURES} decoder steps failed in a row: {error}")

    def _update(self, top_tokens: np.ndarray, top_logp: np.ndarray) -> None:
        """The step's candidates ``(B, c)`` (chosen in the graph): greedy rows take the first, each beam request
        advances its search over its rows' candidates."""
        batch = self.batch
        nxt = top_tokens[:, 0].copy()
        beams: dict[int, list[Sequence]] = {}  # live beam requests by beam size: advanced together below
        for seq in batch.sequences():
            if seq.finish_reason is not None:
                continue
            seq.steps += 1
            if seq.first_token_at is None:
                seq.first_token_at = time.monotonic()
                self.metrics.observe("generation_time_to_first_token_seconds", seq.first_token_at - seq.submitted_at, model=self.model)
            if seq.search is not None:
                beams.setdefault(seq.beam_size, []).append(seq)
                continue
            token = int(nxt[seq.rows[0]])
            if token == self.eos and self.options.ignore_eos:
                token = nxt[seq.rows[0]] = int(top_tokens[seq.rows[0], 1])
            if token == self.eos:
                self._finish(seq, "eos")
                continue
            seq.tokens.append(token)
            if seq.on_token is not None:
                seq.on_token(token)
            if self.options.stop_on_repetition and not self.options.ignore_eos and runaway(seq.tokens):
                self._finish(seq, "repetition")
            elif len(seq.tokens) >= seq.max_new_tokens:
                self._finish(seq, "length")
        dst, src = [], []
        for group in beams.values():
            rows = np.array([seq.rows for seq in group], dtype=np.int64)  # (R, k)
            came_from, tokens, done = advance_all([seq.search for seq in group], top_tokens[rows], top_logp[rows])
            nxt[rows] = tokens
            came_from = np.take_along_axis(rows, came_from, axis=1)
            moved = came_from != rows
            dst.append(rows[moved])
            src.append(came_from[moved])
            for seq, ended in zip(group, done):
                if ended or seq.steps >= seq.max_new_tokens:
                    seq.tokens = seq.search.best()
                    self._finish(seq, "eos" if ended else "length")
        if dst:
            batch.reorder(np.concatenate(dst), np.concatenate(src))
        batch.last = nxt.astype(np.int64)

    def _fail(self, seq: Sequence, message: str) -> None:
        seq.error = message
        self._finish(seq, "error")

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.finish_reason is None:
            seq.finish_reason = reason
            self.finished[reason] += 1
            self.metrics.inc("generation_tokens_total", len(seq.tokens), model=self.model)
            if len(seq.tokens) > 1 and seq.first_token_at is not None:
                per_token = (time.monotonic() - seq.first_token_at) / (len(seq.tokens) - 1)
                self.metrics.observe("generation_time_per_output_token_seconds", per_token, model=self.model)
            if reason == "deadline" and seq.admitted_at_step is None:
                self.metrics.inc("inference_rejected_total", model=self.model, reason="deadline")
            if seq.admitted_at_step is not None or reason in ENDED:
                with self.lock:
                    if reason in ENDED:
                        self.scheduler.observed_finish(seq.steps)
                    if seq.admitted_at_step is not None:
                        self.scheduler.left(seq)
        seq.finished_at_step = self.steps
        try:  # the waiter may have cancelled it meanwhile (its deadline answered, its client gone)
            if reason == "error":
                seq.future.set_exception(StepFailed(seq.error or "decoding failed"))
            else:
                seq.future.set_result(list(seq.tokens))
        except InvalidStateError:
            pass
