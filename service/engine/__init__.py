"""The decoding engine of the translator and the captioner: iteration-level batching of greedy, beam and streamed
sequences in one loop per replica.

* ``scheduler``: the waiting queue and admission by goodput (pure Python);
* ``batch``: the running batch's rows and KV caches, beam row reorder;
* ``search``: one sequence's greedy or beam search, a step at a time;
* ``loop``: ``DecodeEngine``, step = schedule → execute → update;
* ``calibration``: the batch width where decoded tokens per second stop rising.
"""

from service.engine.scheduler import EngineOptions, QueueFull, Sequence

__all__ = ["DecodeEngine", "EngineOptions", "QueueFull", "Sequence", "StepFailed"]


def __getattr__(name: str):
    """``DecodeEngine`` and ``StepFailed`` on first use: the loop imports ``service.runtime``, which imports
    ``service.decoding``, which imports ``search`` from this package; loading the loop here eagerly would close
    that circle."""
    if name in ("DecodeEngine", "StepFailed"):
        from service.engine import loop

        return getattr(loop, name)
    raise AttributeError(name)
