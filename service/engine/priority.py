"""The decode loop's CPU priority: below the replica's event loop, so that parsing, admission and refusals go first.

A replica's event loop (HTTP and gRPC parsing, admission, refusals, answers) and its decode loops share the
replica's cores. Under overload on a small machine they are all runnable at once, and at one priority the kernel
gave the event loop its turn only after the decode threads' slices: a refusal, which takes about a millisecond of
CPU, waited hundreds of ms for it. The decode thread runs a few nice levels below the process instead (Linux sets
niceness per thread; 4 levels weigh about 2.4 to 1 in the kernel's fair scheduler): the event loop is served first
when both want a core, and the decode thread still gets every cycle the event loop leaves, so throughput does not
change. A thread inherits the niceness of the thread that creates it, so ONNX Runtime's intra-op worker threads,
created with the sessions, keep the process's priority: with ``num_cpus: 1`` (one intra-op thread, the calling one,
as deployed) the whole step runs lowered; with more, only the calling thread's share does.

Lowering is always allowed; raising a thread back (a smaller ``decode_nice`` at run time) needs ``CAP_SYS_NICE``,
which containers usually lack: it then stays where it was, and ``stats()["nice"]`` shows the value in force.

Measured (2 vCPUs, ``tests/benchmarks/overload.py --factor 2 --seconds 30``, one service, the decode threads reniced
between runs, alternated twice): refusal p50 42-61 → 13-21 ms, p99 327-431 → 113-151 ms, goodput 0.57-0.64× →
0.61-0.64× capacity; at 1, 16 and 64 closed-loop clients on every route, the same answers per second within noise.
"""

from __future__ import annotations

import os
import sys
import threading

MAX_NICE = 19  # Linux's lowest priority


def niceness() -> int | None:
    """The calling thread's nice value; None where niceness is not per thread (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # on Linux: this thread's own
    except OSError:
        return None


def lower_this_thread(base: int, by: int) -> int | None:
    """Set the calling thread's nice value to ``base + by`` (at most 19) and return the value now in force. Where it
    cannot be set (raising a priority back up without ``CAP_SYS_NICE``), it is left as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(MAX_NICE, base + by))
    except OSError:
        pass
    return niceness()
