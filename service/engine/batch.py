"""The running batch's layout: which sequence owns each row, and the rows' KV caches.

Sequences of different ages share one batch through the decoder's ``self_mask`` and ``position_ids``: the batch
holds one self-attention cache ``(B, H, P, Dh)`` per layer in which each row has its own valid columns (a row
admitted late starts with all earlier columns masked out), and one cross-attention K/V ``(B, H, S, Dh)`` per layer
with a source mask. A beam request owns ``beam_size`` rows; after each step its rows are reordered in place (row
``i`` continues from row ``src[i]`` of the same request), so beams of different requests and greedy rows decode
in one step. Newcomers take finished rows in place; columns no live row uses are trimmed whenever rows change.
"""

from __future__ import annotations

import numpy as np

from service.runtime import decoder_feed


class KVBatch:
    def __init__(self, layers: int, bos: int) -> None:
        self.layers, self.bos = layers, bos
        self.clear()

    def clear(self) -> None:
        self.owner: list = []  # the Sequence of each row
        self.past: list[np.ndarray] = []  # 2L arrays (B, H, P, Dh): keys of every layer, then values
        self.valid = np.zeros((0, 0), dtype=bool)  # (B, P): which cache columns belong to each row
        self.cross: list[np.ndarray] = []  # 2L arrays (B, H, S, Dh)
        self.cross_mask = np.zeros((0, 0), dtype=bool)  # (B, S)
        self.last = np.zeros(0, dtype=np.int64)  # (B,) token fed at the next step

    def __len__(self) -> int:
        return len(self.owner)

    def sequences(self) -> list:
        """The sequences in the batch, each once, in row order."""
        return list(dict.fromkeys(self.owner))

    def _index(self) -> None:
        for seq in self.sequences():
            seq.rows = []
        for i, seq in enumerate(self.owner):
            seq.rows.append(i)

    # ------------------------------------------------------------------------------ rows in and out
    def place(self, seqs: list, cross: list[np.ndarray], mask: np.ndarray, slots: list[int]) -> None:
        """Newcomers, one encoder row each in ``cross``/``mask`` (repeated for a beam's rows): they take the rows
        ``slots`` (of finished sequences) in place, and rows past those are appended."""
        widths = [s.width for s in seqs]
        if max(widths) > 1:
            repeat = np.repeat(np.arange(len(seqs)), widths)
            cross, mask = [a[repeat] for a in cross], mask[repeat]
        owners = [s for s in seqs for _ in range(s.width)]
        heads, head_dim = cross[0].shape[1], cross[0].shape[3]
        if not self.owner:
            self.past = [np.zeros((0, heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.cross = [np.zeros((0, heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.valid, self.cross_mask = np.zeros((0, 0), dtype=bool), np.zeros((0, 0), dtype=bool)
        k = min(len(slots), len(owners))
        if k:
            rows, s_new = np.asarray(slots[:k], dtype=np.int64), mask.shape[1]
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
            for row, seq in zip(slots, owners[:k]):
                self.owner[row] = seq
            owners, cross, mask = owners[k:], [c[k:] for c in cross], mask[k:]
        if owners:
            b_new, p = len(owners), self.valid.shape[1]
            s_old, s_new = self.cross_mask.shape[1], mask.shape[1]
            s = max(s_old, s_new)
            pad_s = lambda a, width: np.pad(a, ((0, 0), (0, 0), (0, width - a.shape[2]), (0, 0)))
            self.past = [np.concatenate([a, np.zeros((b_new, heads, p, head_dim), dtype=a.dtype)]) for a in self.past]
            self.valid = np.concatenate([self.valid, np.zeros((b_new, p), dtype=bool)])
            self.cross = [np.concatenate([pad_s(old, s), pad_s(new, s)]) for old, new in zip(self.cross, cross)]
            self.cross_mask = np.concatenate([np.pad(self.cross_mask, ((0, 0), (0, s - s_old))),
                                              np.pad(mask, ((0, 0), (0, s - s_new)))])
            self.last = np.concatenate([self.last, np.full(b_new, self.bos, dtype=np.int64)])
            self.owner += owners
        self._index()

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order): compaction when finished rows have no newcomer to take them."""
        if not rows:
            self.clear()
            return
        idx = np.asarray(rows, dtype=np.int64)
        self.owner = [self.owner[i] for i in rows]
        self.past = [a[idx] for a in self.past]
        self.valid = self.valid[idx]
        self.cross = [a[idx] for a in self.cross]
        self.cross_mask = self.cross_mask[idx]
        self.last = self.last[idx]
        self.trim()
        s = int(np.flatnonzero(self.cross_mask.any(axis=0)).max()) + 1  # trim source padding
        self.cross = [a[:, :, :s] for a in self.cross]
        self.cross_mask = self.cross_mask[:, :s]
        self._index()

    def idle(self, rows: list[int]) -> None:
        """Rows whose sequence has finished, left in place until a newcomer takes them: they keep no cache columns
        (so ``trim`` can drop what only they used) and their outputs are ignored."""
        if rows:
            self.valid[rows] = False

    def trim(self) -> None:
        """Drop leading cache columns no live row uses any more (views, no copy)."""
        used = np.flatnonzero(self.valid.any(axis=0))
        first = int(used[0]) if len(used) else self.valid.shape[1]
        if first:
            self.past = [a[:, :, first:] for a in self.past]
            self.valid = self.valid[:, first:]

    def reorder(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Beam search: row ``dst[i]`` continues from row ``src[i]`` (rows of one request). Only the rows that change
        are copied, in place; cross K/V and masks are the same for every row of a request."""
        if len(dst):
            for a in self.past:
                a[dst] = a[src]  # the right side is gathered into a temporary first: swaps are safe

    # ------------------------------------------------------------------------------ one step
    def feed(self, rows: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        """The decoder's inputs for every row (or only ``rows``), and the self mask the step will have made."""
        valid, cross_mask, last, past, cross = self.valid, self.cross_mask, self.last, self.past, self.cross
        if rows is not None:
            valid, cross_mask, last = valid[rows], cross_mask[rows], last[rows]
            past, cross = [a[rows] for a in past], [a[rows] for a in cross]
        self_mask = np.concatenate([valid, np.ones((len(last), 1), dtype=bool)], axis=1)  # the new token's column
        positions = valid.sum(axis=1, keepdims=True).astype(np.int64)  # each row's own length
        return decoder_feed(last[:, None], positions, self_mask, cross_mask, past, cross), self_mask

    def advanced(self, present: list[np.ndarray], self_mask: np.ndarray) -> None:
        """The step ran: its ``present.*`` are the cache (one more column, valid for every row)."""
        self.past, self.valid = list(present), self_mask
