"""The decode loop's CPU priority: below the replica's event loop, so that parsing, admission and refusals preempt it.

A replica's event loop (HTTP and gRPC parsing, admission, refusals, answers) and its decode loops share the
replica's cores. Under overload on a small machine they are all runnable at once, and at one priority the kernel
gives the event loop its turn only after the decode threads' slices: a refusal, which takes about a millisecond of
CPU, waited hundreds of ms for it. The decode thread runs a few nice levels below the process instead (Linux sets
niceness per thread); it still gets the CPU whenever the event loop has nothing to do, so throughput does not change.

Measured (2 vCPUs, ``tests/benchmarks/overload.py --factor 2 --seconds 30``, one service, the decode threads reniced
between runs, alternated twice): refusal p50 42-61 → 13-21 ms, p99 327-431 → 113-151 ms, goodput 0.57-0.64× →
0.61-0.64× capacity; at 1, 16 and 64 closed-loop clients on every route, the same answers per second within noise.
"""

from __future__ import annotations

import os
import threading

MAX_NICE = 19  # Linux's lowest priority


def niceness() -> int:
    """The calling thread's nice value (on Linux, ``getpriority`` of the thread's id is the thread's own)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_this_thread(base: int, by: int) -> int:
    """Set the calling thread's nice value to ``base + by`` (at most 19) and return the value now in force. Where it
    cannot be set (not Linux; raising a priority back up without ``CAP_SYS_NICE``), it is left as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(MAX_NICE, base + by))
    except (OSError, AttributeError):
        pass
    return niceness()
