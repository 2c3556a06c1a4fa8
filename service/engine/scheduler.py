"""Who decodes next: the waiting queue, admission by goodput, and the wait estimate (pure Python, no model).

Queueing is normal. A request waits while the batch is full and is refused only when it cannot be served within
its budget: its own deadline (``X-Request-Timeout-Ms`` / the gRPC deadline) where it has one, else
``max_queue_wait_s`` of waiting for a place in the batch. It is refused at once (``QueueFull``, answered 503 /
RESOURCE_EXHAUSTED) when the estimate already says it cannot make it, and later (``finish_reason`` "rejected")
if it is still waiting when its budget runs out; so nothing waits without end, and nothing is refused that the
service could have done in time.

The estimate is a model, not a recent departure rate: rows ahead of a request leave a full batch of width ``W``
at ``W / (steps per sequence × step time)`` per second. Both factors are running means of what the loop measured,
starting from priors (the calibration's step time; ``PRIOR_STEPS``) so that an engine that is merely starting
answers a finite wait, never infinity.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

PRIOR_STEPS = 24.0  # steps a sequence decodes, before any has finished (a short translation or a caption: 8-30)
PRIOR_STEP_S = 0.005  # a full step's time (schedule, execute, update) before calibration or the loop has measured one
EMA = 0.05  # weight of a new observation in the running means (about the last 20)
# A request with a deadline of its own joins the queue only if its expected wait is at most this share of what its
# deadline leaves. The estimate is a running mean; with the queue allowed to fill to the whole deadline, a sustained
# 2× overload (2026-12-01, one replica holding the three models) kept every queued request waiting ~4.8 s of its 5 s
# deadline and a third of those admitted ran out of time (504: decoded for nothing). Half still keeps seconds of work
# queued, so the batch never starves and goodput holds; the rest is refused at once, which is what a client can act
# on. A request without a deadline is queued while its expected wait is within max_queue_wait_s itself: nothing is
# decoded for nothing if it waits longer (it is refused then, undecoded), and the half share refused ordinary load
# (2026-12-02, 64 closed-loop clients of beam-4 translations on 2 vCPUs: 161 of 1,474 answers a 503 in one 8 s run,
# 74 of 908 in another, while the slowest 200 had waited 0.9 s: the estimate, a running mean of a noisy step time,
# crossed 1 s).
WAIT_SHARE = 0.5


def _owed(widths: list[int], owed: int) -> int:
    """Rows of a request's waiting sequences (``widths``, in order) placed before a newcomer when it is owed ``owed``
    rows: whole sequences (a beam owed one row is still placed with all of its rows)."""
    ahead = 0
    for width in widths:
        if owed <= 0:
            break
        ahead += width
        owed -= width
    return ahead


def _turn(seq: Sequence) -> float:
    """When one of its request's sequences last got or left a place in the batch, or when it arrived if none has:
    the owed are admitted in this order (round robin: a request just served goes behind those that waited)."""
    leader = seq.leader or seq
    return leader.submitted_at if leader.served_at is None else leader.served_at


@dataclass
class _Count:
    """The waiting queue as admission reads it: rows ahead of a newcomer, rows queued, requests decoding or waiting,
    and the earliest deadline among the queued sequences (the count is stale after it)."""

    limit: int
    length: int  # len(waiting) when counted
    queued: int
    ahead: int
    requests: int
    due: float
    multi: int  # waiting sequences of requests of several (some may be decoding): while none, a step is subtracted


class QueueFull(RuntimeError):
    """The engine cannot take the request: the caller answers 503 / RESOURCE_EXHAUSTED. ``reason``: "queue_full"
    (its rows do not fit the queue) or "expected_wait" (it would wait past its budget for a place)."""

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 32  # rows (a greedy sequence is one row, a beam request beam_size) decoded together in a step
    max_queue: int = 1024  # rows waiting beyond this are refused at once (QueueFull "queue_full")
    # A request without a deadline of its own waits at most this long for a place in the batch: refused at once
    # when the estimate says it would wait longer, or when it has. Two seconds: a refusal tells the client to retry
    # after 1 s (Retry-After), so refusing a request that would wait less than about that only makes it later; 64
    # closed-loop clients of beam-4 translations waited 0.5-0.6 s for a place on 2 vCPUs, so a machine half as fast
    # still serves them all; and a human-facing call that has not started within 2 s is better told to go elsewhere.
    max_queue_wait_s: float = 2.0
    # True: the batch width is the one of at most max_batch where decoded tokens per second stop rising, measured
    # at start (calibration: on a GPU usually max_batch itself). False: max_batch, unmeasured.
    auto_width: bool = True
    idle_wait_s: float = 0.05  # how long the loop sleeps when there is nothing to do
    # "iteration": admit waiting sequences at every step (the point of this engine). "static": admit only when the
    # batch has emptied (request-level batching, what @serve.batch gives); kept to measure against, not for use.
    scheduling: str = "iteration"
    # True: every sequence decodes exactly max_new_tokens tokens; neither EOS nor the repetition guard ends it (the
    # best non-EOS candidate is taken). vLLM's ignore_eos: for benchmarks and tests that need long decodes of a
    # model whose outputs are short; never for serving users (they would get garbage after the real answer).
    ignore_eos: bool = False
    # The repetition guard (models/repetition.py): a piece repeated a 4th time in a row ends the output. On for the
    # shipped models (the trained translator loops on input outside its domain); off for an imported checkpoint
    # (its config.json, "generation.stop_on_repetition"), whose outputs are held to transformers' generate().
    stop_on_repetition: bool = True
    # Beam search's rule for EOS candidates: "engine" (any of the step's 2k best ends its hypothesis) or "transformers"
    # (only one among the k best does, as transformers' generate(); an imported checkpoint's config.json asks for it)
    beam_rule: str = "engine"
    # The decode thread runs this many nice levels below the process (at most 19): the replica's event loop, which
    # parses, admits and refuses, goes first under overload (service/engine/priority.py). 0: the process's priority.
    decode_nice: int = 4

    def __post_init__(self) -> None:
        if self.beam_rule not in ("engine", "transformers"):
            raise ValueError(f"beam_rule must be 'engine' or 'transformers', got {self.beam_rule!r}")
        if self.scheduling not in ("iteration", "static"):
            raise ValueError(f"scheduling must be 'iteration' or 'static', got {self.scheduling!r}")
        if self.max_batch < 1 or self.max_queue < 0:
            raise ValueError(f"max_batch must be ≥ 1 and max_queue ≥ 0, got {self.max_batch} and {self.max_queue}")
        if not 0 <= self.decode_nice <= 19:
            raise ValueError(f"decode_nice must be within 0..19, got {self.decode_nice}")
        if not self.max_queue_wait_s > 0:
            raise ValueError(f"max_queue_wait_s must be > 0, got {self.max_queue_wait_s}")


@dataclass(eq=False)
class Sequence:
    """One source (a text or an image) of a request. ``future`` resolves to the generated token ids (EOS
    excluded): the argmax path for ``beam_size`` 1, the best hypothesis for more (each beam is a row)."""

    source: object  # encoder input for one source: token ids (S,) or an image (1, H, W)
    max_new_tokens: int
    deadline: float | None = None  # time.monotonic() after which the sequence is dropped (504)
    on_token: Callable[[int], None] | None = None  # called from the engine thread for each new token (greedy)
    beam_size: int = 1
    length_penalty: float = 1.0
    id: int = field(default_factory=itertools.count().__next__)
    tokens: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    finish_reason: str | None = None  # "eos" | "length" | "repetition" | "deadline" | "cancelled" | "rejected" | "error"
    error: str | None = None  # why, for "error"
    admitted_at_step: int | None = None
    finished_at_step: int | None = None
    steps: int = 0  # decoder steps it took part in
    submitted_at: float = field(default_factory=time.monotonic)
    leader: Sequence | None = None  # the first sequence of its request (submit_all)
    served_at: float | None = None  # a leader's: when one of its request's sequences last got or left a place
    first_token_at: float | None = None
    search: object | None = None  # the engine's per-sequence search state (BeamState for beams)
    rows: list[int] = field(default_factory=list)  # its rows in the running batch
    counted: bool = False  # in the scheduler's running count of the queue (not gone when last counted)

    @property
    def width(self) -> int:
        """Rows it takes in the batch."""
        return self.beam_size

    def cancel(self) -> None:
        """Drop the sequence at the next step boundary (client gone); its rows are freed then."""
        self.cancelled = True

    def gone(self, now: float) -> bool:
        """Finished, cancelled or past its deadline: it holds no place any more (the loop drops it next step)."""
        return self.cancelled or self.finish_reason is not None or (self.deadline is not None and now > self.deadline)


class Scheduler:
    """The waiting queue and its admission rules. Not thread-safe: the engine calls it under its lock."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.waiting: deque[Sequence] = deque()
        self.held: dict[Sequence, int] = {}  # rows each request (by its leader) has decoding
        self.step_s = PRIOR_STEP_S  # running mean of a full-width step's seconds
        self.steps_per_seq = PRIOR_STEPS  # running mean of the steps a finished sequence took
        self._count: _Count | None = None  # the queue as submit sees it (``_counted``)

    # ---------------------------------------------------------------------------- estimates
    def observed_step(self, seconds: float) -> None:
        """A full-width iteration of the loop took ``seconds``: its encoder runs and bookkeeping included, which is
        what the rows waiting really wait for (the decoder step alone priced the wait ~2× low under load)."""
        self.step_s += EMA * (seconds - self.step_s)

    def observed_finish(self, steps: int) -> None:
        self.steps_per_seq += EMA * (max(1, steps) - self.steps_per_seq)

    def waiting_rows(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        return sum(s.width for s in self.waiting if not s.gone(now))

    def rows_ahead(self, now: float, limit: int) -> int:
        """The waiting rows a new request would wait behind: under the fair share (``admit``), each waiting request's
        rows up to what it is owed, not a big request's whole backlog."""
        return self._recount(now, limit).ahead

    def _recount(self, now: float, limit: int) -> _Count:
        waiting: dict[Sequence, list[int]] = {}
        queued, due = 0, float("inf")
        for s in self.waiting:
            s.counted = not s.gone(now)
            if s.counted:
                waiting.setdefault(s.leader or s, []).append(s.width)
                queued += s.width
                if s.deadline is not None:
                    due = min(due, s.deadline)
        requests = len(set(self.held) | set(waiting))
        share = max(1, limit // (requests + 1))  # + 1: the newcomer
        ahead = sum(_owed(widths, share - self.held.get(leader, 0)) for leader, widths in waiting.items())
        multi = sum(len(widths) for leader, widths in waiting.items() if len(widths) > 1 or leader in self.held)
        return _Count(limit, len(self.waiting), queued, ahead, requests, due, multi)

    def _counted(self, now: float, limit: int) -> _Count:
        """``_recount``, kept up to date instead of redone: ``submit`` adds its request; while every waiting request is
        one sequence (the usual case, and overload's), a waiting request's rows are all ahead of a newcomer whatever
        the fair share, so ``admit`` subtracts what left the queue and ``left`` what left the batch. With requests of
        several sequences waiting, their share of the queue depends on everyone's, and the count is redone after a
        step (once a step at most); it is redone too once a queued deadline has passed. Counting the whole queue at
        every arrival made admission quadratic: under 3× overload on 2 vCPUs, ~1,000 queued rows were rescanned for
        each of ~500 arrivals a second under the engine's lock (14 % of the replica's CPU, py-spy: refusals waited
        seconds in the event loop behind it), and redoing it once a step still took 8 %.
        Between two steps a count can run high by the shrinking of the others' fair shares as requests arrive (a
        request that holds less than its share, with a backlog beyond it: rare, and never more than that backlog).
        A cancelled sequence is counted until the next step drops it."""
        c = self._count
        if c is None or c.limit != limit or c.length != len(self.waiting) or now > c.due:
            c = self._count = self._recount(now, limit)
        return c

    def _changed(self) -> None:
        self._count = None

    def clear(self) -> list[Sequence]:
        """Empty the queue and forget what requests hold (the engine stopped); returns what was waiting."""
        waiting, self.waiting = list(self.waiting), deque()
        self.held.clear()
        self._changed()
        return waiting

    def expected_wait(self, width: int, live_rows: int, limit: int, now: float) -> float:
        """Seconds a request of ``width`` rows arriving now would wait for its place: 0 while the batch has room
        for it and the rows ahead of it (``rows_ahead``), else the rows that must leave first ÷ the rate rows leave a
        full batch.
        Finite always (the priors stand in until the loop has measured)."""
        need = self._counted(now, limit).ahead + width - max(0, limit - live_rows)
        if need <= 0:
            return 0.0
        rate = limit / (self.steps_per_seq * self.step_s)  # rows leaving per second
        return need / rate

    # ---------------------------------------------------------------------------- submit / admit
    def service_s(self, seq: Sequence) -> float:
        """Seconds it is expected to decode once placed."""
        return min(seq.max_new_tokens, self.steps_per_seq) * self.step_s

    def budget(self, seq: Sequence, now: float) -> float:
        """Seconds it may wait for a place: max_queue_wait_s, or, with a deadline, what leaves it time to decode
        before the deadline (a request placed too late to finish is decoded for a client already told 504)."""
        return self.options.max_queue_wait_s if seq.deadline is None else seq.deadline - now - self.service_s(seq)

    def submit(self, seqs: list[Sequence], live_rows: int, limit: int, now: float) -> None:
        """Queue one request's sequences together, or none of them (``QueueFull``: no partial work)."""
        width = sum(s.width for s in seqs)
        # Wider than the batch's chosen width (a CPU's measured one may be 4) it runs alone, over that width (admit);
        # only wider than the configured max_batch_size can it never run.
        if too_wide := [s.width for s in seqs if s.width > self.options.max_batch]:
            raise QueueFull(f"beam_size {too_wide[0]} needs more rows than the batch holds ({self.options.max_batch})")
        queued = self._counted(now, limit).queued
        if queued + width > self.options.max_queue:
            raise QueueFull(f"{queued} rows already waiting, room for {self.options.max_queue}")
        wait = self.expected_wait(seqs[0].width, live_rows, limit, now)  # its later sequences wait behind its own work
        # Refused only for the queue: with a place free now it is tried, whatever its deadline (it may be short enough;
        # if not, the deadline answers 504, which says what happened, where a 503 would invite a pointless retry).
        share = 1.0 if seqs[0].deadline is None else WAIT_SHARE
        if wait > 0 and wait > share * (budget := self.budget(seqs[0], now)):
            raise QueueFull(f"would wait about {wait * 1e3:.0f} ms for a place in the batch, over "
                            f"{'half ' if share < 1 else ''}its budget of {max(budget, 0) * 1e3:.0f} ms", "expected_wait")
        for seq in seqs:
            seq.leader, seq.submitted_at, seq.counted = seqs[0], seqs[0].submitted_at, True
        self.waiting.extend(seqs)
        c = self._count  # counted above (_counted): this request added
        c.ahead += _owed([s.width for s in seqs], max(1, limit // (c.requests + 1)))
        c.queued, c.requests, c.length = c.queued + width, c.requests + 1, len(self.waiting)
        c.multi += len(seqs) if len(seqs) > 1 else 0
        c.due = min([c.due] + [s.deadline for s in seqs if s.deadline is not None])

    def admit(self, room: int, now: float, limit: int | None = None) -> tuple[list[Sequence], list[tuple[Sequence, str]]]:
        """(The sequences that take up to ``room`` rows now; those to finish instead, with why).

        Fair share first: every request (decoding or waiting) is owed ``limit`` ÷ their number rows, and the
        sequences of requests holding less than that are admitted first, in turn: the request served least recently
        first (one of its sequences placed or leaving; one never served: by arrival); what room is left goes first
        come, first served. In both, a sequence that does not fit yet (a beam of four rows when two are
        free) is not overtaken: under load, one-row requests would take every row as it frees and starve it. So
        one client's request of 64 long texts gets its share of the batch, not all of it, and the ordinary requests
        behind it start at once instead of waiting out their budget (before this, 16 clients beside such a request
        got one 503 for every 200). The turns matter where the batch is no wider than a beam: a request of
        many beam-8 sequences on a width of 8 was owed its share again each time one of its own sequences left, and
        took every place while the one-row requests behind it waited out their budget (2026-12-03, 3-6 refusals in
        a 4.7 s request of 64 such sequences beside 3 ordinary clients)."""
        before, count = len(self.waiting), self._count
        admitted, dropped = self._admit(room, now, limit)
        if count is not None and count.multi == 0 and count.length == before:  # one-sequence requests only: subtract
            gone = sum(s.width for s in admitted if s.counted) + sum(s.width for s, _ in dropped if s.counted)
            count.queued, count.ahead = count.queued - gone, count.ahead - gone
            count.requests -= sum(s.counted for s, _ in dropped)
            count.length = len(self.waiting)
        else:
            self._changed()
        return admitted, dropped

    def _admit(self, room: int, now: float, limit: int | None) -> tuple[list[Sequence], list[tuple[Sequence, str]]]:
        admitted, dropped, keep, served = [], [], deque(), False
        for seq in self.waiting:  # cancelled or expired anywhere in the queue: out now
            if seq.cancelled or (seq.deadline is not None and now > seq.deadline):
                dropped.append((seq, "cancelled" if seq.cancelled else "deadline"))
            else:
                keep.append(seq)
                served = served or (seq.leader or seq).served_at is not None  # a request partly served waits
        self.waiting = keep
        if limit is not None and self.waiting and room > 0:
            # Turns (_turn): a request of many sequences takes its turn with the others instead of going before them
            # each time one of its own sequences leaves. The queue itself stays in arrival order (_overdue reads it).
            order = sorted(self.waiting, key=_turn) if served else self.waiting
            if room >= limit and order[0].width > room:
                # the batch is empty and the first in turn is a beam wider than its width: it runs alone, over the
                # width (2026-12-02: a beam_size 8 request was refused for good by a translator whose width was 4)
                room = order[0].width
            requests = set(self.held) | {s.leader or s for s in self.waiting}
            share = max(1, limit // len(requests))
            taken = set()
            for seq in order:
                if self.held.get(seq.leader or seq, 0) < share:
                    if seq.width > room:  # an owed beam that does not fit yet is not overtaken, here or first
                        room = 0  # come first served below: one-row sequences would take every row as it frees
                        break
                    self._take(seq, admitted, now)
                    taken.add(seq)
                    room -= seq.width
            if taken:
                self.waiting = deque(s for s in self.waiting if s not in taken)
        while self.waiting and self.waiting[0].width <= room:
            room -= self.waiting[0].width
            self._take(self.waiting.popleft(), admitted, now)
        return admitted, dropped + self._overdue(now)

    def _take(self, seq: Sequence, admitted: list[Sequence], now: float) -> None:
        leader = seq.leader or seq
        self.held[leader] = self.held.get(leader, 0) + seq.width
        leader.served_at = now
        admitted.append(seq)

    def left(self, seq: Sequence, now: float | None = None) -> None:
        """An admitted sequence has left the batch (at ``now``): its request holds its rows no more."""
        leader = seq.leader or seq
        leader.served_at = time.monotonic() if now is None else now
        if (held := self.held.get(leader, 0) - seq.width) > 0:
            self.held[leader] = held
        else:
            self.held.pop(leader, None)
        if (count := self._count) is not None and count.multi == 0 and held <= 0:
            count.requests -= 1  # a one-sequence request gone: nothing of it waits, so nothing ahead changes
        elif count is not None:
            self._changed()

    def _overdue(self, now: float) -> list[tuple[Sequence, str]]:
        """The requests without a deadline still waiting past max_queue_wait_s none of whose sequences has started
        (a request whose first sequences are decoding keeps its place: the rest wait behind its own work)."""
        cutoff = now - self.options.max_queue_wait_s
        if not self.waiting or self.waiting[0].submitted_at >= cutoff:
            return []
        keep, refused = deque(), []
        for seq in self.waiting:
            leader = seq.leader or seq
            if seq.deadline is None and seq.submitted_at < cutoff and leader.admitted_at_step is None:
                refused.append((seq, "rejected"))
            else:
                keep.append(seq)
        self.waiting = keep
        return refused
