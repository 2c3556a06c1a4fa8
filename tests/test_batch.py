"""The running batch's rows and caches (numpy only, no model): placement, beam reorder, compaction, idle rows.

``step`` plays the decoder's part: it appends one column to the cache the batch feeds (after the batch applied its
pending row and column edits, here in place on numpy, as on the CPU)."""

import numpy as np

from service.engine.batch import KVBatch
from service.engine.scheduler import Sequence

LAYERS, HEADS, DH, BOS = 1, 2, 4, 2


def encoded(n: int, source_len: int, fill: float):
    """What the encoder gives ``n`` sources: cross K/V (2L arrays (n, H, S, Dh)) and the source mask (n, S)."""
    cross = [np.full((n, HEADS, source_len, DH), fill, dtype=np.float32) for _ in range(2 * LAYERS)]
    return cross, np.ones((n, source_len), dtype=bool)


def step(batch: KVBatch, value: float) -> None:
    """What a decoder step does to the cache: rows gathered, dead columns dropped, one more column, here filled
    with each row's index + ``value``."""
    feed, self_mask = batch.feed()
    past = [feed[f"past_key_values.0.{kind}"] for kind in ("key", "value")]
    rows = np.arange(len(batch), dtype=np.float32)[:, None, None, None]
    present = [np.concatenate([p, np.broadcast_to(rows + value, (len(batch), HEADS, 1, DH))], axis=2) for p in past]
    assert feed["position_ids"].shape == (len(batch), 1) and self_mask.shape[1] == present[0].shape[2]
    batch.advanced(present, self_mask)


def test_a_beam_request_takes_its_rows_and_a_late_row_starts_with_its_own_columns():
    batch = KVBatch(LAYERS, BOS)
    greedy, beam = Sequence(None, 10), Sequence(None, 10, beam_size=3)
    batch.place([greedy, beam], *encoded(2, 5, 1.0), slots=[])
    assert batch.owner == [greedy, beam, beam, beam] and greedy.rows == [0] and beam.rows == [1, 2, 3]
    assert (batch.last == BOS).all() and batch.cross[0].shape == (4, HEADS, 5, DH)
    step(batch, 0.0)
    late = Sequence(None, 10)
    batch.place([late], *encoded(1, 7, 2.0), slots=[])  # a longer source: the cross K/V widen
    assert batch.cross_mask.shape == (5, 7) and batch.cross_mask[:4, 5:].sum() == 0
    feed, _ = batch.feed()
    assert feed["position_ids"][:, 0].tolist() == [1, 1, 1, 1, 0]  # each row's own length
    assert batch.valid[4].sum() == 0  # the newcomer sees none of the earlier columns


def test_beam_rows_continue_from_the_rows_they_were_told():
    batch = KVBatch(LAYERS, BOS)
    beam = Sequence(None, 10, beam_size=3)
    batch.place([beam], *encoded(1, 3, 1.0), slots=[])
    step(batch, 10.0)  # row i's column holds 10 + i
    batch.reorder(np.array([0, 2]), np.array([1, 1]))  # rows 0 and 2 continue from row 1
    assert batch.rows.tolist() == [1, 1, 1]  # applied before the next step
    step(batch, 20.0)
    assert batch.past[0][:, 0, -2, 0].tolist() == [11.0, 11.0, 11.0]
    assert batch.past[0][:, 0, -1, 0].tolist() == [20.0, 21.0, 22.0] and batch.rows.tolist() == [0, 1, 2]


def test_finished_rows_are_reused_in_place_idle_or_compacted():
    batch = KVBatch(LAYERS, BOS)
    seqs = [Sequence(None, 10) for _ in range(8)]
    batch.place(seqs, *encoded(8, 4, 1.0), slots=[])
    step(batch, 0.0)
    newcomer = Sequence(None, 10)
    batch.place([newcomer], *encoded(1, 4, 3.0), slots=[2])  # takes the row of a finished sequence
    assert batch.owner[2] is newcomer and len(batch) == 8 and not batch.valid[2].any()
    assert (batch.cross[0][2] == 3.0).all() and batch.last[2] == BOS
    assert batch.feed()[0]["cross.0.key"] is batch.feed()[0]["cross.0.key"]  # uploaded once, until the rows change
    batch.idle([5])  # a finished row left in place: it keeps no columns
    assert not batch.valid[5].any() and batch.valid[0].all()
    batch.keep([0, 1, 2])
    assert batch.owner == seqs[:2] + [newcomer] and batch.rows.tolist() == [0, 1, 2] and newcomer.rows == [2]
    batch.keep([2])  # only the newcomer: the columns only the others used are dropped by the next step
    assert batch.valid.shape == (1, 0) and batch.rows.tolist() == [2] and batch.offset == 1
    step(batch, 5.0)
    assert batch.past[0].shape == (1, HEADS, 1, DH) and batch.past[0][0, 0, 0, 0] == 5.0
    batch.keep([])
    assert len(batch) == 0 and batch.valid.shape == (0, 0)
