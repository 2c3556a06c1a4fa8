"""Iteration-level batching (Orca, Yu et al., OSDI 2022): one decoding loop per decoder replica.

Requests do not wait for each other. Between two decoding steps the loop admits waiting requests (their
encoder pass runs then, once, producing their cross-attention K/V) and retires every sequence that has
finished, so a short request that arrives while a long one is decoding joins the running batch at the next
step and leaves as soon as it is done.

The loop is schedule → execute → update (vLLM's ``EngineCore.step``):

* schedule: retire finished/cancelled sequences, admit new ones up to ``max_batch``;
* execute: one ``decoder.onnx`` step for the whole batch;
* update: append each row's argmax token, stream it, mark EOS / length / deadline.

Sequences of different ages share one batch through the decoder's ``self_mask`` and ``position_ids``: the
batch holds one KV cache ``(B, H, P, Dh)`` per layer in which each row has its own valid columns (a row
admitted late starts with all earlier columns masked out). Columns no live row uses any more are trimmed
whenever the batch changes. Greedy decoding only: beam search runs per request through
``EncoderDecoderRuntime.generate``.

Admission (what keeps latency bounded under overload, RELIABILITY.md):

* ``max_step_slowdown``: a step of B sequences costs more than a step of one (much more on a CPU than on a GPU),
  and a request's latency is its steps × the step time. At start the engine times decoder steps at several batch
  widths on dummy inputs and caps the batch at the widest whose step costs at most this many times a one-sequence
  step (``batch_limit``; on a GPU usually ``max_batch`` itself, on a small CPU a few sequences).
* ``max_queue_wait_s``: a request is refused at once (``QueueFull``) when the sequences ahead of it would keep it
  waiting longer than this at the rate sequences have recently been leaving the batch, and a sequence still
  waiting after this long is refused then. Either way the caller hears within about this long, and what is
  admitted starts promptly.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import itertools
import os
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from service.metrics import DECODER_STEP_SAMPLE, metrics
from service.runtime import EncoderDecoderRuntime, kv_names


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 32  # sequences decoded together in one step
    max_queue: int = 256  # waiting sequences beyond this are refused (QueueFull); keep ≥ 64, a request's most
    idle_wait_s: float = 0.05  # how long the loop sleeps when there is nothing to do
    # "iteration": admit waiting sequences at every step (the point of this engine). "static": admit only when the
    # batch has emptied, so a batch runs to its longest member before the next starts (request-level batching, what
    # @serve.batch gives); kept to measure against (tests/benchmarks/batching_bench.py), not for production.
    scheduling: str = "iteration"
    # Latency bounds (None: off, batch and queue bounded by count only). See the module docstring.
    max_step_slowdown: float | None = None
    max_queue_wait_s: float | None = None

    def __post_init__(self) -> None:
        if self.scheduling not in ("iteration", "static"):
            raise ValueError(f"scheduling must be 'iteration' or 'static', got {self.scheduling!r}")
        if self.max_batch < 1 or self.max_queue < 0:
            raise ValueError(f"max_batch must be ≥ 1 and max_queue ≥ 0, got {self.max_batch} and {self.max_queue}")
        if self.max_step_slowdown is not None and not self.max_step_slowdown >= 1:
            raise ValueError(f"max_step_slowdown must be ≥ 1 (or None), got {self.max_step_slowdown}")
        if self.max_queue_wait_s is not None and not self.max_queue_wait_s >= 0:
            raise ValueError(f"max_queue_wait_s must be ≥ 0 (or None), got {self.max_queue_wait_s}")


RATE_WINDOW_S = 2.0  # departures older than this do not count towards the rate expected_wait uses
CALIBRATION_LOCK = os.path.join(tempfile.gettempdir(), "inference-calibration.lock")  # calibrations on one machine
# take turns, so that none times its steps beside another's: the translator's step of two measured 1.19-1.32× a step
# of one with the captioner calibrating beside it, 1.13-1.24× alone (six calibrations each, 2 vCPUs)


def release_freed_heap() -> None:
    """Hand the heap memory freed so far back to the system. glibc keeps freed memory for reuse until a later free
    happens to trim the heap: a calibration's inputs for wide batches (~120 MB for the translator at 32) stayed in the
    replica's RSS for minutes after it, then dropped at some moment (a soak read it as a 22 % change of RSS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


class QueueFull(RuntimeError):
    """The engine cannot take the request now: the caller should answer 503 / RESOURCE_EXHAUSTED. ``reason``:
    "queue_full" (its sequences do not fit the queue: says more about the request's size than about when a slot
    frees) or "expected_wait" (no slot soon: the batch is busy)."""

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Sequence:
    """One request in the engine. ``future`` resolves to the generated token ids (EOS excluded)."""

    source: np.ndarray  # encoder input for one request: token ids (S,) or an image (1, H, W)
    max_new_tokens: int
    deadline: float | None = None  # time.monotonic() after which the sequence is dropped
    on_token: Callable[[int], None] | None = None  # called from the engine thread for every new token
    id: int = field(default_factory=itertools.count().__next__)
    tokens: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    finish_reason: str | None = None  # "eos" | "length" | "deadline" | "cancelled" | "rejected" | "error"
    admitted_at_step: int | None = None
    finished_at_step: int | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    leader: Sequence | None = None  # the first sequence of its request (submit_all)
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Drop the sequence at the next step boundary (client gone); its cache is freed then."""
        self.cancelled = True


class DecodeEngine:
    """The decode loop of one replica; thread-safe ``submit``; ``start`` / ``stop`` the loop thread."""

    def __init__(self, runtime: EncoderDecoderRuntime, options: EngineOptions = EngineOptions()) -> None:
        self.rt, self._options = runtime, options
        self.model = runtime.directory.parent.name  # the metrics' "model" label
        self.metrics = metrics()
        self._step_sampler = random.Random()
        special = runtime.config["special_tokens"]
        self.bos, self.eos, self.pad = special["bos"], special["eos"], special["pad"]
        self.layers = runtime.layers
        self._past_names, self._cross_names = kv_names("past_key_values", self.layers), kv_names("cross", self.layers)
        self.text_source = runtime.config.get("encoder", {}).get("input", "input_ids") == "input_ids"
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Condition()
        self._calibration_done = threading.Condition(self.lock)  # configure() waits on it; the loop notifies
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.finished: collections.Counter[str] = collections.Counter()  # sequences by finish reason, since start
        self.batch_limit = options.max_batch  # max_batch, or less where max_step_slowdown says so (calibrate)
        self.step_costs: dict[int, float] = {}  # batch width → step time relative to one sequence (last calibration)
        self._calibrated_for: tuple | None = None
        self._left: deque[float] = deque(maxlen=64)  # when admitted sequences last left the batch
        self._reset_batch()

    @property
    def options(self) -> EngineOptions:
        return self._options

    @options.setter
    def options(self, options: EngineOptions) -> None:
        """New options take effect at the next step; a changed slowdown bound or batch recalibrates there."""
        with self.lock:
            self._options = options
            if options.max_step_slowdown is None:
                self.batch_limit, self._calibrated_for, self.step_costs = options.max_batch, None, {}
            self.lock.notify()  # an idle loop applies them now, not after its idle wait

    def configure(self, options: EngineOptions, timeout: float | None = None) -> bool:
        """Set ``options`` and return once they are in force: a new slowdown bound or batch is calibrated (by the loop
        thread, between steps) before this returns, so a replica configured here is not ready, and takes no request,
        while it still measures. False if ``timeout`` seconds passed first, or the options were replaced meanwhile."""
        self.options = options
        key = (options.max_step_slowdown, options.max_batch)
        if key[0] is None:
            return True
        if self.thread is None:  # not started: measure here
            self._calibrate_if_needed()
            return self._calibrated_for == key
        with self.lock:
            return self._calibration_done.wait_for(
                lambda: self._calibrated_for == key or self._options is not options or not self.running, timeout) \
                and self._calibrated_for == key

    # ----------------------------------------------------------------------------------- public API

    def submit(self, seq: Sequence) -> Sequence:
        return self.submit_all([seq])[0]

    def submit_all(self, seqs: list[Sequence]) -> list[Sequence]:
        """Queue the sequences of one request together, or none of them (``QueueFull``): no partial work."""
        with self.lock:
            if len(self.waiting) + len(seqs) > self.options.max_queue:
                self.metrics.inc("inference_rejected_total", model=self.model, reason="queue_full")
                raise QueueFull(f"{len(self.waiting)} sequences already waiting, room for {self.options.max_queue}")
            bound = self.options.max_queue_wait_s
            if bound is not None and (wait := self.expected_wait()) > bound:
                self.metrics.inc("inference_rejected_total", model=self.model, reason="expected_wait")
                raise QueueFull(f"would wait about {wait * 1e3:.0f} ms for a slot in the batch (bound {bound * 1e3:.0f} ms)",
                                "expected_wait")
            for seq in seqs:  # one request's sequences wait, and are refused for waiting, together
                seq.leader, seq.submitted_at = seqs[0], seqs[0].submitted_at
            self.waiting.extend(seqs)
            self.lock.notify()
        return seqs

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait before its first sequence joins the batch: 0 while the batch has
        a free slot for it, else the sequences ahead of it × the recent interval between sequences leaving the batch
        (at least the time since the last one left: a batch that has stopped moving is not about to free a slot).
        Its own later sequences are not counted: they wait behind its own work, which is its service time.

        Sequences already cancelled or past their deadline are not counted either, waiting or decoding: the loop
        drops them at its next step. And a slot frees no later than the deadline of the sequence holding it."""
        now = time.monotonic()

        def gone(seq: Sequence) -> bool:
            return seq.cancelled or seq.finish_reason is not None or (seq.deadline is not None and now > seq.deadline)

        decoding = [seq for seq in self.active if not gone(seq)]
        ahead = sum(not gone(seq) for seq in self.waiting) + 1 - max(0, self.batch_limit - len(decoding))
        if ahead <= 0:
            return 0.0
        left = self._left
        while left and now - left[0] > RATE_WINDOW_S:  # the rate of the last moments, not of an earlier load
            left.popleft()
        if len(left) < 2:
            wait = float("inf") if not left else ahead * (now - left[-1])
        else:
            wait = ahead * max((left[-1] - left[0]) / (len(left) - 1), now - left[-1])
        deadlines = sorted(seq.deadline - now for seq in decoding if seq.deadline is not None)
        if ahead <= len(deadlines):  # the ahead-th slot to free frees by the ahead-th deadline at the latest
            wait = min(wait, deadlines[ahead - 1])
        return wait

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
            self._calibration_done.notify_all()  # a configure() waiting for the loop gives up
        if self.thread:
            self.thread.join()
        for seq in list(self.active) + list(self.waiting):
            self._finish(seq, "cancelled")
        self._reset_batch()
        self.waiting.clear()

    @property
    def load(self) -> tuple[int, int]:
        """(sequences decoding, sequences waiting)."""
        return len(self.active), len(self.waiting)

    # ------------------------------------------------------------------------------------- the loop

    def _reset_batch(self) -> None:
        self.active: list[Sequence] = []
        self.past: list[np.ndarray] = []  # 2L arrays (B, H, P, Dh): keys of every layer, then values
        self.valid = np.zeros((0, 0), dtype=bool)  # (B, P): which cache columns belong to each row
        self.cross: list[np.ndarray] = []  # 2L arrays (B, H, S, Dh)
        self.cross_mask = np.zeros((0, 0), dtype=bool)  # (B, S)
        self.last = np.zeros(0, dtype=np.int64)  # (B,) token fed at the next step

    def _loop(self) -> None:
        while True:
            self._calibrate_if_needed()  # after start or a reconfigure: between steps, never during one
            with self.lock:
                if self.running and not self.active and not self.waiting:
                    self.lock.wait(self.options.idle_wait_s)
                    continue
                if not self.running:
                    return
            try:
                self.step()
            except Exception as error:  # a failing step fails its sequences, never the loop
                for seq in self.active:
                    seq.finish_reason = "error"
                    self.finished["error"] += 1
                    if not seq.future.done():
                        seq.future.set_exception(error)
                self._reset_batch()

    def step(self) -> None:
        """schedule → execute → update, once (also callable directly, without the loop thread)."""
        self._calibrate_if_needed()
        self._schedule()
        if not self.active:
            return
        logits = self._execute()
        self._update(logits)
        self.steps += 1

    def _schedule(self) -> None:
        now = time.monotonic()
        dead = []  # rows whose sequence is done: their slots are refilled in place, or compacted away
        for i, seq in enumerate(self.active):
            if seq.cancelled:
                self._finish(seq, "cancelled")
            elif seq.deadline is not None and now > seq.deadline:
                self._finish(seq, "deadline")
            if seq.finish_reason is not None:
                dead.append(i)
        with self.lock:
            room = self.batch_limit - (len(self.active) - len(dead))
            if self.options.scheduling == "static" and len(self.active) > len(dead):
                room = 0
            admitted = []
            while self.waiting and room > 0:
                seq = self.waiting.popleft()
                if seq.cancelled or (seq.deadline is not None and now > seq.deadline):
                    self._finish(seq, "cancelled" if seq.cancelled else "deadline")
                    continue
                admitted.append(seq)
                room -= 1
            bound = self.options.max_queue_wait_s
            if bound is not None and self.waiting and now - self.waiting[0].submitted_at > bound:
                self._refuse_overdue(now - bound)
        # Newcomers take the slots of finished rows in place (no copy of the batch's caches); rows appended only
        # past those. Under load the batch is never re-packed: measured at 80 req/s, re-packing on every retirement
        # and admission took half the loop's time (BENCHMARKS.md, batching).
        reused, leftover = dead[: len(admitted)], dead[len(admitted) :]
        if admitted:
            self._admit(admitted, reused)
        if leftover:  # nothing waiting to take these slots: compact the batch
            gone = set(leftover)
            self._select_rows(np.array([i for i in range(len(self.active)) if i not in gone], dtype=np.int64))
        elif reused:
            self._trim_columns()

    def _refuse_overdue(self, cutoff: float) -> None:
        """Refuse the requests waiting since before ``cutoff`` none of whose sequences has started (a request whose
        first sequences are decoding keeps its place: the rest wait behind its own work). Holds the lock."""
        keep: deque[Sequence] = deque()
        for seq in self.waiting:
            leader = seq.leader or seq
            if seq.submitted_at < cutoff and leader.admitted_at_step is None:
                if seq is leader:
                    self.metrics.inc("inference_rejected_total", model=self.model, reason="queue_timeout")
                self._finish(seq, "rejected")
            else:
                keep.append(seq)
        self.waiting = keep

    def _select_rows(self, rows: np.ndarray) -> None:
        self.active = [self.active[i] for i in rows]
        if not self.active:
            self._reset_batch()
            return
        self.past = [a[rows] for a in self.past]
        self.valid = self.valid[rows]
        self.cross = [a[rows] for a in self.cross]
        self.cross_mask = self.cross_mask[rows]
        self.last = self.last[rows]
        self._trim_columns()
        s = int(np.flatnonzero(self.cross_mask.any(axis=0)).max()) + 1  # trim source padding
        self.cross = [a[:, :, :s] for a in self.cross]
        self.cross_mask = self.cross_mask[:, :s]

    def _trim_columns(self) -> None:
        """Drop leading cache columns no live row uses any more (views, no copy)."""
        used = np.flatnonzero(self.valid.any(axis=0))
        first = int(used[0]) if len(used) else self.valid.shape[1]
        if first:
            self.past = [a[:, :, first:] for a in self.past]
            self.valid = self.valid[:, first:]

    def _admit(self, seqs: list[Sequence], slots: list[int] = ()) -> None:
        """Encode the newcomers together (cross K/V computed once, here); they take the rows ``slots`` (of finished
        sequences) in place, and the rest are appended as new rows."""
        started = time.monotonic()
        for seq in seqs:
            self.metrics.observe("inference_queue_duration_seconds", started - seq.submitted_at, model=self.model)
        if self.text_source:
            longest = max(len(s.source) for s in seqs)
            src = np.full((len(seqs), longest), self.pad, dtype=np.int64)
            for i, s in enumerate(seqs):
                src[i, : len(s.source)] = s.source
            cross, mask = self.rt.encode(src, src != self.pad)
        else:
            cross, mask = self.rt.encode(np.stack([s.source for s in seqs]).astype(np.float32), None)
        self.metrics.observe("inference_compute_duration_seconds", time.monotonic() - started, model=self.model, stage="encoder")
        self.metrics.observe("inference_batch_size", len(seqs), model=self.model, stage="encoder")
        heads, head_dim = cross[0].shape[1], cross[0].shape[3]
        if not self.active:
            self.past = [np.zeros((0, heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.valid = np.zeros((0, 0), dtype=bool)
            self.cross = [np.zeros((0, heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.cross_mask = np.zeros((0, 0), dtype=bool)
        if slots:
            k, rows = len(slots), np.asarray(slots, dtype=np.int64)
            s_new = mask.shape[1]
            if s_new > self.cross_mask.shape[1]:  # a longer source than any in the batch: widen (a copy, rare)
                grow = s_new - self.cross_mask.shape[1]
                self.cross = [np.pad(a, ((0, 0), (0, 0), (0, grow), (0, 0))) for a in self.cross]
                self.cross_mask = np.pad(self.cross_mask, ((0, 0), (0, grow)))
            for a in self.past:
                a[rows] = 0
            self.valid[rows] = False
            for a, new in zip(self.cross, cross):
                a[rows] = 0
                a[rows, :, :s_new] = new[:k]
            self.cross_mask[rows] = False
            self.cross_mask[rows, :s_new] = mask[:k]
            self.last[rows] = self.bos
            for slot, seq in zip(slots, seqs[:k]):
                self.active[slot] = seq
                seq.admitted_at_step = self.steps
            seqs, cross, mask = seqs[k:], [c[k:] for c in cross], mask[k:]
            if not seqs:
                return
        b_new = len(seqs)
        p = self.valid.shape[1]
        s_old, s_new = self.cross_mask.shape[1], mask.shape[1]
        s = max(s_old, s_new)
        pad_s = lambda a, width: np.pad(a, ((0, 0), (0, 0), (0, width - a.shape[2]), (0, 0)))
        self.past = [np.concatenate([a, np.zeros((b_new, heads, p, head_dim), dtype=a.dtype)]) for a in self.past]
        self.valid = np.concatenate([self.valid, np.zeros((b_new, p), dtype=bool)])
        self.cross = [np.concatenate([pad_s(old, s), pad_s(new, s)]) for old, new in zip(self.cross, cross)]
        self.cross_mask = np.concatenate([np.pad(self.cross_mask, ((0, 0), (0, s - s_old))), np.pad(mask, ((0, 0), (0, s - s_new)))])
        self.last = np.concatenate([self.last, np.full(b_new, self.bos, dtype=np.int64)])
        for seq in seqs:
            seq.admitted_at_step = self.steps
        self.active += seqs

    def _execute(self) -> np.ndarray:
        b = len(self.active)
        # the new token's column, valid for every live row: this step's mask, and the cache's columns after it
        self_mask = np.concatenate([self.valid, np.ones((b, 1), dtype=bool)], axis=1)
        feeds = {
            "input_ids": self.last[:, None],
            "position_ids": self.valid.sum(axis=1, keepdims=True).astype(np.int64),  # each row's own length
            "self_mask": self_mask,
            "cross_mask": self.cross_mask,
        }
        feeds.update(zip(self._past_names, self.past))
        feeds.update(zip(self._cross_names, self.cross))
        started = time.monotonic()
        outputs = self.rt.decoder.run(None, feeds)
        if self._step_sampler.random() * DECODER_STEP_SAMPLE < 1:
            self.metrics.observe("inference_compute_duration_seconds", time.monotonic() - started, model=self.model, stage="decoder_step")
            self.metrics.observe("inference_batch_size", b, model=self.model, stage="decoder_step")
        self.past = outputs[1:]  # present.*: one more column, valid for every live row
        self.valid = self_mask
        return outputs[0]

    def _update(self, logits: np.ndarray) -> None:
        nxt = logits.argmax(-1)
        for i, seq in enumerate(self.active):
            token = int(nxt[i])
            if token == self.eos:
                self._finish(seq, "eos")
                continue
            seq.tokens.append(token)
            if seq.first_token_at is None:
                seq.first_token_at = time.monotonic()
                self.metrics.observe("generation_time_to_first_token_seconds", seq.first_token_at - seq.submitted_at, model=self.model)
            if seq.on_token is not None:
                seq.on_token(token)
            if len(seq.tokens) >= seq.max_new_tokens:
                self._finish(seq, "length")
        self.last = nxt.astype(np.int64)

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
            if seq.admitted_at_step is not None:
                self._left.append(time.monotonic())
        seq.finished_at_step = self.steps
        if not seq.future.done():
            seq.future.set_result(list(seq.tokens))

    # ------------------------------------------------------------------------------- calibration

    def _calibrate_if_needed(self) -> None:
        key = (self.options.max_step_slowdown, self.options.max_batch)
        if key[0] is None or key == self._calibrated_for:
            return
        with open(CALIBRATION_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
            costs = self.calibrate()
        release_freed_heap()
        limit = 1
        for width, cost in sorted(costs.items()):  # the widest before the first that costs too much
            if cost > key[0]:
                break
            limit = width
        with self.lock:  # (the options setter takes it too)
            if key != (self.options.max_step_slowdown, self.options.max_batch):
                return  # the options changed while it ran (a reconfigure): the next call measures for the new ones
            self.step_costs, self.batch_limit, self._calibrated_for = costs, limit, key
            self._calibration_done.notify_all()

    def calibrate(self, rounds: int = 20, chain: int = 4) -> dict[int, float]:
        """Decoder step time at batch widths up to ``max_batch``, relative to one sequence: ``{width: ratio}``.

        Dummy inputs shaped like long requests, the kind whose latency the bound protects: ``L`` positions long (the
        decoder's ``max_len``, at most 256), a source half the encoder's longest (capped at 128 tokens) or one blank
        image, and random cache values. A width is timed with the cache a full batch of that width carries: the
        batch keeps every column since its oldest live row began (``_trim_columns``), and rows of a full batch
        start one after another as others finish, so the oldest is on average ``L·(1 − 1/(2·width))`` in (``L/2``
        for one sequence, ``3L/4`` for two, ``5L/6`` for three). (Timing every width at ``L/2``, as before, made a
        step of three look 1.5× a step of one; at the width it really carries it is 1.8×, and the admitted requests
        of a full batch capped at three took 2.4× their idle time at p50. A step of one costs the same at any
        cache length up to 256, so the reference does not move.)

        A width is timed the way the loop feeds it: ``chain`` consecutive steps, each fed the cache the step before
        it returned (ONNX Runtime's own output buffers, one column longer each time), after one untimed step from
        the dummy arrays; its time is their mean. It prices a step of two ~8 % above what the loop's own timers
        measure while it decodes, the safe side for a latency bound. (Timing one step fed the dummy numpy arrays, as before, was
        bimodal from one calibration to the next on the same process: in some, a one-sequence step took ~300 µs
        against ~210 µs in the others, every ratio shrank, a step of three looked cheaper than one of two, and the
        cap came out 4 where it was 2 in the rest; RELIABILITY.md.) Each round times every width once, back to
        back, and divides by the round's own one-sequence time; a width's cost is the median over rounds, so a burst
        of work elsewhere on the machine, which slows the widths timed beside it alike, does not move it.
        """
        cfg = self.rt.config
        heads, head_dim = cfg["decoder"]["heads"], cfg["decoder"]["head_dim"]
        positions = max(2 + chain, min(256, cfg["decoder"]["max_len"]))  # L

        def cache(b: int) -> int:  # columns a full batch of b staggered rows carries, on average (room for the chain)
            return max(1, min(positions - 1 - chain, round(positions * (1 - 1 / (2 * b)))))

        rng = np.random.default_rng(0)
        if self.text_source:
            length = max(1, min(128, cfg.get("encoder", {}).get("max_source_tokens", 48) // 2))
            source = (np.arange(length, dtype=np.int64) % (cfg["decoder"]["vocab_size"] - 4) + 4)[None]
            cross, cross_mask = self.rt.encode(source, np.ones(source.shape, dtype=bool))
        else:
            size = cfg["encoder"]["image_size"]
            cross, cross_mask = self.rt.encode(np.zeros((1, 1, size, size), dtype=np.float32), None)
        widths = sorted({b for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if b <= self.options.max_batch}
                        | {self.options.max_batch})
        fixed, start = {}, {}  # per width: the feeds no step changes, and the dummy cache the first step is fed
        for b in widths:
            fixed[b] = {"input_ids": np.full((b, 1), self.bos, dtype=np.int64), "cross_mask": np.repeat(cross_mask, b, axis=0)}
            fixed[b].update(zip(self._cross_names, (np.repeat(a, b, axis=0) for a in cross)))
            start[b] = [rng.standard_normal((b, heads, cache(b), head_dim)).astype(self.rt.float_type) for _ in self._past_names]

        def steps(b: int) -> float:
            """Mean seconds of ``chain`` chained steps at width ``b``."""
            past, took = start[b], 0.0
            for k in range(chain + 1):
                columns = past[0].shape[2]
                feeds = dict(fixed[b], position_ids=np.full((b, 1), columns, dtype=np.int64),
                             self_mask=np.ones((b, columns + 1), dtype=bool))
                feeds.update(zip(self._past_names, past))
                started = time.perf_counter()
                past = self.rt.decoder.run(None, feeds)[1:]  # present.*: the next step's cache
                if k:  # the first step, from the dummy arrays, warms (a shape's first use plans its kernels)
                    took += time.perf_counter() - started
            return took / chain

        ratios: dict[int, list[float]] = {b: [] for b in widths}
        for _ in range(rounds):
            took = {b: steps(b) for b in widths}
            for b in widths:
                ratios[b].append(took[b] / took[widths[0]])
        costs = {b: float(np.median(ratios[b])) for b in widths}
        # never below 1: a step of one sequence costs no more than a wider one, whatever the timer says
        return {b: round(max(1.0, costs[b]), 3) for b in widths}
