"""The batch width: steps timed at start, the width chosen where tokens per second stop rising."""

import ctypes
import os
import sys
import threading
import time

import numpy as np
import pytest

from service.engine import DecodeEngine, EngineOptions, Sequence
from service.engine import calibration
from service.engine.calibration import choose_width, step_seconds
from service.runtime import EncoderDecoderRuntime
from tests.servicekit import rss_mb


@pytest.fixture(scope="module")
def rt(repo):
    return EncoderDecoderRuntime(repo / "translator" / "1")


def test_the_width_is_where_tokens_per_second_stop_rising():
    # a CPU: throughput rises to 16 then falls; 12 is within 5 % of the best
    cpu = {1: 1.0, 2: 1.4, 4: 2.2, 8: 3.9, 12: 5.3, 16: 7.0, 24: 12.0, 32: 18.0}
    assert max(cpu, key=lambda w: w / cpu[w]) == 16 and choose_width(cpu) == 12
    # a GPU: a step of 32 costs about what a step of one does
    gpu = {1: 1.0, 2: 1.0, 4: 1.01, 8: 1.02, 16: 1.05, 32: 1.1}
    assert choose_width(gpu) == 32
    # a machine where one row is already the best
    assert choose_width({1: 1.0, 2: 2.5, 4: 6.0}) == 1


def test_step_seconds_times_every_width_fed_the_cache_the_step_before_returned(rt):
    """As the loop feeds them: each timed step is fed the ``present.*`` ONNX Runtime returned for the step before it
    (one column longer); only the untimed first step of a chain gets the dummy arrays."""
    runs = []  # (width, columns of the cache fed, the first past array fed, the first present array returned)

    run_step = rt.run_step

    def recording(feeds, **kw):
        out = run_step(feeds, **kw)
        past = feeds["past_key_values.0.key"]
        columns = past.shape[2] if isinstance(past, np.ndarray) else past.shape()[2]
        runs.append((feeds["input_ids"].shape[0], columns, past, out[2][0]))
        return out

    rt.run_step = recording
    try:
        seconds = step_seconds(rt, 2, rounds=2, chain=3)
    finally:
        del rt.run_step
    assert set(seconds) == {1, 2} and 0 < seconds[1] <= seconds[2]
    chains = [runs[i : i + 4] for i in range(0, len(runs), 4)]
    assert len(chains) == 2 * 2 and [c[0][0] for c in chains] == [1, 2, 1, 2]  # rounds × widths, widths in turn
    for chain in chains:
        for before, after in zip(chain, chain[1:]):
            assert after[0] == before[0] and after[1] == before[1] + 1
            assert after[2] is before[3]  # fed what the step before returned
    assert chains[0][0][1] < chains[1][0][1]  # two rows carry a longer cache than one


def test_calibrations_on_one_machine_take_turns(rt, monkeypatch):
    """Replicas start together; one timing its steps while another does would measure the other's load too."""
    spans, measure = [], calibration._measure

    def timed(*args):
        started = time.monotonic()
        try:
            return measure(*args)
        finally:
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(calibration, "_measure", timed)
    threads = [threading.Thread(target=step_seconds, args=(rt, 4, 3)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, spans


def test_a_calibration_whose_options_were_replaced_gives_up_and_the_loop_decodes_at_once(rt):
    """A reconfigure that turned auto_width on, then another that turned it off, before the first calibration got its
    turn (another replica on the machine held the lock): the loop must not wait for a measurement nobody will use.
    (The CI flake: requests sent right after the second reconfigure were not decoding 10 s later.)"""
    stale = threading.Event()
    held = open(calibration.CALIBRATION_LOCK, "a")
    calibration.fcntl.flock(held, calibration.fcntl.LOCK_EX)  # another replica calibrating
    engine = None
    try:
        answer = []
        thread = threading.Thread(target=lambda: answer.append(step_seconds(rt, 2, rounds=2, stale=stale.is_set)))
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()  # waits its turn
        stale.set()
        thread.join(timeout=5)
        assert not thread.is_alive() and answer == [None]

        engine = DecodeEngine(rt, EngineOptions(max_batch=2, auto_width=False)).start()
        engine.options = EngineOptions(max_batch=4)  # auto_width: the loop waits for the lock
        seq = engine.submit(Sequence(np.array([5, 6, 7, 3]), 4))
        time.sleep(0.3)
        assert not seq.future.done()  # nothing is decoded while the loop calibrates
        engine.options = EngineOptions(max_batch=4, auto_width=False)
        assert len(seq.future.result(timeout=10)) <= 4  # while the lock is still held
        assert engine.step_times == {} and engine.batch_limit == 4
        engine.options = EngineOptions(max_batch=4)  # waits for the lock again ...
        time.sleep(0.3)
        stopping = threading.Thread(target=engine.stop)
        stopping.start()
        stopping.join(timeout=5)
        assert not stopping.is_alive()  # ... and a stopping engine does not wait for it
    finally:
        held.close()
        if engine is not None:
            engine.stop()
    # and a calibration that nothing replaced still measures
    assert set(step_seconds(rt, 2, rounds=1, chain=2, stale=lambda: False)) == {1, 2}


def test_a_configure_waiting_for_a_calibration_returns_when_its_options_are_replaced(rt):
    """Serve runs each reconfigure in a thread of its own, so two can overlap: the first, waiting for its
    calibration, must return (False: not in force) once the second replaced its options, not wait forever."""
    held = open(calibration.CALIBRATION_LOCK, "a")
    calibration.fcntl.flock(held, calibration.fcntl.LOCK_EX)  # its calibration cannot start
    engine = DecodeEngine(rt, EngineOptions(max_batch=2, auto_width=False)).start()
    try:
        answer = []
        first = threading.Thread(target=lambda: answer.append(engine.configure(EngineOptions(max_batch=4))),
                                 daemon=True)
        first.start()
        time.sleep(0.3)
        assert first.is_alive()  # waiting for its calibration
        engine.options = EngineOptions(max_batch=4, auto_width=False)  # the second reconfigure
        first.join(timeout=5)
        assert not first.is_alive() and answer == [False]
    finally:
        held.close()
        engine.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and calls glibc's malloc_trim")
def test_a_calibration_hands_the_memory_it_freed_back_to_the_system(rt):
    """Its inputs for wide batches are freed on return, but glibc kept them from the system: the replica's RSS
    stayed that much higher until some later free trimmed the heap, minutes later."""
    thread = threading.Thread(target=step_seconds, args=(rt, 32, 2))  # in a thread of its own, as in the loop
    thread.start()
    thread.join()
    held = rss_mb(os.getpid())
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    assert held - rss_mb(os.getpid()) < 30, "a trim after the calibration still gave back this much (MB)"


def test_the_engine_batches_as_wide_as_its_calibration_says_and_configure_waits_for_it(rt):
    # What a replica's reconfigure relies on: when configure returns, the width is known, so no request that arrives
    # after the replica reports ready waits behind a calibration.
    engine = DecodeEngine(rt, EngineOptions(max_batch=4, auto_width=False)).start()
    try:
        assert engine.step_times == {} and engine.batch_limit == 4
        assert engine.configure(EngineOptions(max_batch=8))
        assert set(engine.step_times) == {1, 2, 4, 8} and engine.batch_limit == choose_width(engine.step_times)
        assert engine.scheduler.step_s == engine.step_times[engine.batch_limit]  # the wait estimate's prior
        assert engine.configure(EngineOptions(max_batch=2))
        assert set(engine.step_times) == {1, 2}
        assert engine.configure(EngineOptions(max_batch=3, auto_width=False))  # nothing to measure
        assert engine.batch_limit == 3 and engine.step_times == {}
        assert not engine.configure(EngineOptions(max_batch=4), timeout=0.0)  # not yet
        seq = engine.submit(Sequence(np.array([5, 6, 7, 3]), 8))
        assert len(seq.future.result(timeout=30)) <= 8  # and the loop decodes as before
    finally:
        engine.stop()
    assert not engine.configure(EngineOptions(max_batch=2))  # stopped: returns, unmeasured


def test_the_loops_own_time_a_step_widens_a_width_the_decoder_alone_left_narrow():
    from service.engine.calibration import LoopWidth

    flat = {4: 0.0004, 8: 0.0008, 16: 0.0016, 32: 0.0032}  # the decoder alone: the same rows per second at any width
    assert choose_width(flat) == 4
    width = LoopWidth(flat, every=4)
    assert [width.observe(0.0014, 0.0004) for _ in range(4)] == [None, None, None, 32]  # 1 ms of its own a step
    assert width.host_s == pytest.approx(0.001)
    assert width.step_s(16) == pytest.approx(0.0026)
    idle = LoopWidth(flat, every=1)
    assert idle.observe(0.0004, 0.0004) == 4  # no time of its own: the decoder's choice stands
    # a decoder whose rows per second fall past 8 keeps its width however the loop adds to it a little
    falling = {4: 0.0004, 8: 0.0006, 16: 0.0030, 32: 0.0090}
    assert LoopWidth(falling, every=1).observe(0.0007, 0.0006) == 8


def test_the_engine_re_chooses_its_width_as_the_loop_runs_full(rt):
    engine = DecodeEngine(rt, EngineOptions(max_batch=32, ignore_eos=True))
    engine.step()  # calibrates (nothing to decode yet)
    engine.loop_width = calibration.LoopWidth({w: w * 1e-5 for w in (4, 8, 16, 32)}, every=8)
    engine.batch_limit = 4
    source = np.arange(4, 20, dtype=np.int64)
    try:
        seqs = engine.submit_all([Sequence(source, 40) for _ in range(48)])
        for _ in range(8):
            engine.step()
        assert engine.batch_limit == 32 and engine.loop_width.host_s > 0
        assert engine.scheduler.step_s == pytest.approx(32e-5 + engine.loop_width.host_s)
        engine.step()
        assert len(engine.batch) == 32  # the wider width admits at the next step
        for s in seqs:
            s.cancel()
        engine.step()
    finally:
        engine.stop()


def test_the_loops_time_is_the_mean_of_its_window_and_a_window_forgets_the_one_before():
    from service.engine.calibration import LoopWidth

    width = LoopWidth({8: 0.0008, 16: 0.0016, 32: 0.0032}, every=8)
    for took in [0.0308] + [0.0009] * 7:  # the first full step encoded every newcomer at once: it counts, once
        width.observe(took, 0.0008)
    assert width.host_s == pytest.approx((0.030 + 7 * 0.0001) / 8)
    for _ in range(8):
        width.observe(0.0009, 0.0008)
    assert width.host_s == pytest.approx(0.0001)
