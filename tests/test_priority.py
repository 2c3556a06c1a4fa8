"""The decode thread's CPU priority: lowered below the process's, its own thread only, changed by a reconfigure."""

import threading
import time

import numpy as np
import pytest

from service.engine import DecodeEngine, EngineOptions, Sequence
from service.engine.priority import MAX_NICE, lower_this_thread, niceness
from service.runtime import EncoderDecoderRuntime


def in_a_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_lowering_changes_the_calling_thread_only_and_stops_at_19():
    base = niceness()
    assert in_a_thread(lambda: lower_this_thread(base, 3)) == min(MAX_NICE, base + 3)
    assert in_a_thread(lambda: lower_this_thread(base, 40)) == MAX_NICE
    assert niceness() == base  # this thread, and so the event loop of a replica, keeps its priority
    assert in_a_thread(niceness) == base  # and a new thread starts at the process's, not the lowered one's


def test_decode_nice_is_a_niceness_step_within_0_to_19():
    with pytest.raises(ValueError, match="decode_nice"):
        EngineOptions(decode_nice=-1)
    with pytest.raises(ValueError, match="decode_nice"):
        EngineOptions(decode_nice=20)


def test_the_engine_decodes_below_the_process_and_a_reconfigure_lowers_it_further(repo):
    base = niceness()
    engine = DecodeEngine(EncoderDecoderRuntime(repo / "translator" / "1"),
                          EngineOptions(max_batch=2, auto_width=False, decode_nice=2)).start()
    try:
        deadline = time.monotonic() + 10
        while engine.nice is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.nice == min(MAX_NICE, base + 2) and niceness() == base
        engine.options = EngineOptions(max_batch=2, auto_width=False, decode_nice=5)
        seq = engine.submit(Sequence(np.array([5, 6, 7, 3]), 4))
        assert len(seq.future.result(timeout=30)) <= 4  # the loop took the new options, and decodes as before
        assert engine.nice == min(MAX_NICE, base + 5)
    finally:
        engine.stop()
