"""The decode thread's CPU priority: lowered below the process's, its own thread only, changed by a reconfigure."""

import sys
import threading
import time

import numpy as np
import pytest

from service.engine import DecodeEngine, EngineOptions, Sequence
from service.engine.priority import MAX_NICE, lower_this_thread, niceness
from service.runtime import EncoderDecoderRuntime

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux only")


def in_a_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@linux_only
def test_lowering_changes_the_calling_thread_only_stops_at_19_and_threads_it_starts_inherit_it():
    base = niceness()
    assert in_a_thread(lambda: lower_this_thread(base, 3)) == min(MAX_NICE, base + 3)
    assert in_a_thread(lambda: lower_this_thread(base, 40)) == MAX_NICE
    assert niceness() == base  # the thread that started them, as a replica's event loop, keeps its priority

    def lowered_then_child():
        lower_this_thread(base, 2)
        return in_a_thread(niceness)
    assert in_a_thread(lowered_then_child) == min(MAX_NICE, base + 2)  # why ORT's workers stay at the process's


def test_decode_nice_is_a_niceness_step_within_0_to_19():
    with pytest.raises(ValueError, match="decode_nice"):
        EngineOptions(decode_nice=-1)
    with pytest.raises(ValueError, match="decode_nice"):
        EngineOptions(decode_nice=20)


@linux_only
def test_the_engine_decodes_below_the_process_and_a_reconfigure_lowers_it_further(repo):
    base = niceness()
    engine = DecodeEngine(EncoderDecoderRuntime(repo / "translator" / "1"),
                          EngineOptions(max_batch=2, auto_width=False, decode_nice=2)).start()
    try:
        assert engine.nice is None  # set before the first step, not while idle
        first = engine.submit(Sequence(np.array([5, 6, 7, 3]), 4))
        first.future.result(timeout=30)
        assert engine.nice == min(MAX_NICE, base + 2) and niceness() == base
        engine.options = EngineOptions(max_batch=2, auto_width=False, decode_nice=5)
        seq = engine.submit(Sequence(np.array([5, 6, 7, 3]), 4))
        assert len(seq.future.result(timeout=30)) <= 4  # the loop took the new options, and decodes as before
        assert engine.nice == min(MAX_NICE, base + 5)
    finally:
        engine.stop()
