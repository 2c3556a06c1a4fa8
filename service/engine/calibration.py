"""How wide the batch should be on this machine: decoder steps timed at several widths, at start.

The width is chosen for throughput: the narrowest width of at most ``max_batch`` whose tokens per second
(``width / step time``) are within ``THROUGHPUT_TOLERANCE`` of the best measured, the step's time being the decoder's
(timed at start) plus the loop's own around it (measured as it runs: ``LoopWidth``). On a GPU a step of 32 rows costs
about what a step of one does, so that is ``max_batch``; on a small CPU it is where tokens/s stop rising. Past that
width a wider batch would only make every row slower without decoding more per second, which under load is the
queue's time too.

(The first engine capped the width where a step cost ``max_step_slowdown`` × a one-row step, a one-request latency
bound: on 2 vCPUs it decoded one translation at a time and refused most of a concurrency of 4.)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import tempfile
import time
from typing import Callable

import numpy as np

from service.runtime import EncoderDecoderRuntime, decoder_feed

THROUGHPUT_TOLERANCE = 0.95
WIDTHS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
CALIBRATION_LOCK = os.path.join(tempfile.gettempdir(), "inference-calibration.lock")  # calibrations on one machine
# take turns, so that none times its steps beside another's (replicas start together; a step of two measured
# 1.19-1.32× a step of one with another model calibrating beside it, 1.13-1.24× alone, on 2 vCPUs)


def release_freed_heap() -> None:
    """Hand the heap memory freed so far back to the system: glibc keeps a calibration's wide-batch inputs (~120 MB
    for the translator at 32) for reuse, and the replica's RSS dropped by that much minutes later (a soak read it as
    a 22 % change of RSS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


def choose_width(seconds: dict[int, float], tolerance: float = THROUGHPUT_TOLERANCE) -> int:
    """The narrowest width whose rows per second are within ``tolerance`` of the best: ``{width: step seconds}``."""
    rate = {w: w / s for w, s in seconds.items()}
    best = max(rate.values())
    return min(w for w, r in rate.items() if r >= tolerance * best)


class LoopWidth:
    """The width as the loop runs: the calibrated decoder step times plus the loop's own time around each step
    (admission, the newcomers' encoder runs, feeds, search updates, and the hand-offs with the threads that submit),
    its mean over the last ``every`` full-width steps (a mean, as throughput is total time over steps; over a window,
    not a running mean from the first step, which is often the one that filled the batch and encoded every newcomer
    at once), the width re-chosen every ``every`` such steps.

    The decoder alone levels off early on a CPU, and its noise decided the width: on 2 vCPUs its rows per second were
    flat from 8 to 32 rows (±10 %), and replicas calibrating beside the start-up of others chose 4, 8 or 16 from one
    start to the next. The loop's answers per second still rise to 32 (measured in-process, 64 clients, 2026-12-03:
    greedy 310 / 460 / 575 / 610 a second at 4 / 8 / 16 / 32 rows, beam 4 107 / 122 / 140 / 190): its own time a
    step (~1 ms) is spread over more rows. The encoder runs stay in it although their cost is mostly per request:
    left out, the loop's time read ~0.3 ms, the width came out 8-16 and the loop answered 560/s greedy and 157-177/s
    beam 4, against 632-788/s and 190-218/s with them in (width 32 each time); the median of the same window instead
    of its mean read 0.1-0.6 ms and decoded 458-571/s and 135-171/s.

    Limits: the loop's time is measured at the width in use and added as if it were the same at every width, so its
    part that grows with the width is charged to the narrower widths too; the choice is never narrower than the
    decoder's alone."""

    def __init__(self, times: dict[int, float], every: int = 64) -> None:
        self.times, self.every = times, every
        self.host_s: float | None = None  # the loop's own seconds a step (None: not measured yet)
        self.samples: list[float] = []

    def observe(self, step_s: float, decoder_s: float) -> int | None:
        """A full-width step took ``step_s``, ``decoder_s`` of it in the decoder: the width to use now, every
        ``every`` steps (None between)."""
        self.samples.append(max(0.0, step_s - decoder_s))
        if len(self.samples) < self.every:
            return None
        self.host_s, self.samples = float(np.mean(self.samples)), []
        return choose_width({w: t + self.host_s for w, t in self.times.items()})

    def step_s(self, width: int) -> float:
        """A step's seconds at ``width``: the decoder's and the loop's own."""
        return self.times[width] + (self.host_s or 0.0)


def step_seconds(runtime: EncoderDecoderRuntime, max_batch: int, rounds: int = 12, chain: int = 4,
                 stale: Callable[[], bool] = lambda: False) -> dict[int, float] | None:
    """Seconds of one decoder step at each width up to ``max_batch``: ``{width: seconds}``, one calibration at a time
    per machine (a lock file).

    Dummy inputs shaped like ordinary requests at load: a source half the encoder's longest (at most 128 tokens)
    or one blank image, and a random cache a full batch of that width carries, ``L·(1 − 1/(2·width))`` columns for
    ``L = min(64, max_len)`` positions (rows of a full batch start one after another as others finish). A width is
    timed the way the loop feeds it: ``chain`` consecutive steps, each fed the cache the step before returned, after
    one untimed step (a shape's first use plans its kernels). Each round times every width once, back to back; a
    width's time is the median over rounds scaled by the one-row median, so a burst of work elsewhere on the
    machine, which slows the widths timed beside it alike, does not move the ratios.

    None, at once, once ``stale()`` is true (checked while waiting for the lock and before each round): the options it
    measured for were replaced, and the engine must not wait for a measurement nobody will use.
    """
    with open(CALIBRATION_LOCK, "a") as lock:
        while True:
            if stale():
                return None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
                break
            except BlockingIOError:
                time.sleep(0.05)
        try:
            return _measure(runtime, max_batch, rounds, chain, stale)
        finally:
            release_freed_heap()


def _measure(rt: EncoderDecoderRuntime, max_batch: int, rounds: int, chain: int,
             stale: Callable[[], bool]) -> dict[int, float] | None:
    cfg = rt.config
    heads, head_dim, layers = cfg["decoder"]["heads"], cfg["decoder"]["head_dim"], rt.layers
    positions = max(2 + chain, min(64, cfg["decoder"]["max_len"]))  # L

    def columns(b: int) -> int:
        return max(1, min(positions - 1 - chain, round(positions * (1 - 1 / (2 * b)))))

    rng = np.random.default_rng(0)
    if cfg.get("encoder", {}).get("input", "input_ids") == "input_ids":
        length = max(1, min(128, cfg.get("encoder", {}).get("max_source_tokens", 48) // 2))
        source = (np.arange(length, dtype=np.int64) % (cfg["decoder"]["vocab_size"] - 4) + 4)[None]
        cross, cross_mask = rt.encode(source, np.ones(source.shape, dtype=bool))
    else:
        cross, cross_mask = rt.encode(rt.blank_images(1), None)
    widths = sorted({b for b in WIDTHS if b <= max_batch} | {max_batch})
    bos = cfg["special_tokens"]["bos"]
    fixed = {b: ([rt.to_device(np.repeat(a, b, axis=0)) for a in cross], np.repeat(cross_mask, b, axis=0)) for b in widths}
    start = {b: [rng.standard_normal((b, heads, columns(b), head_dim)).astype(rt.float_type) for _ in range(2 * layers)]
             for b in widths}

    def timed(b: int) -> float:
        past, took = start[b], 0.0
        cross_b, mask_b = fixed[b]
        p = past[0].shape[2]
        for k in range(chain + 1):
            feed = decoder_feed(np.full((b, 1), bos, dtype=np.int64), np.full((b, 1), p, dtype=np.int64),
                                np.ones((b, p + 1), dtype=bool), mask_b, past, cross_b)
            began = time.perf_counter()
            past = rt.run_step(feed)[2]  # present.*: the next step's cache, where the step left it
            if k:
                took += time.perf_counter() - began
            p += 1
        return took / chain

    ratios: dict[int, list[float]] = {b: [] for b in widths}
    ones = []
    for _ in range(rounds):
        if stale():
            return None
        took = {b: timed(b) for b in widths}
        ones.append(took[widths[0]])
        for b in widths:
            ratios[b].append(took[b] / took[widths[0]])
    one = float(np.median(ones))
    # never below a one-row step: a wider step costs no less, whatever the timer says
    return {b: one * max(1.0, float(np.median(ratios[b]))) for b in widths}
