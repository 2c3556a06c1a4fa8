"""The running batch's layout: which sequence owns each row, and the rows' KV caches.

Sequences of different ages share one batch through the decoder's ``self_mask`` and ``position_ids``: the batch
holds one self-attention cache ``(B, H, P, Dh)`` per layer in which each row has its own valid columns (a row
admitted late starts with all earlier columns masked out), and one cross-attention K/V ``(B, H, S, Dh)`` per layer
with a source mask. A beam request owns ``beam_size`` rows; after each step its rows are reordered (row ``i``
continues from row ``src[i]`` of the same request), so beams of different requests and greedy rows decode in one
step. Newcomers take finished rows in place; columns no live row uses are dropped whenever rows change.

The self-attention cache is what the last step returned (``present.*``, OrtValues on the decoder's device). Changes
to its rows or columns are written down as ``rows`` (which cache row each row continues from) and ``offset``
(leading columns dropped), and applied once, before the next step, where the cache lives (``edit``:
``service.cache_edit.CacheEditor``; nothing to do on most steps). The host keeps the masks, the last tokens, and the
cross-attention K/V, which change when rows do and are uploaded (``upload``) once per change, not per step.
"""

from __future__ import annotations

import numpy as np

from service.cache_edit import edit_in_place, rows_of
from service.runtime import decoder_feed


class KVBatch:
    def __init__(self, layers: int, bos: int, upload=None, edit=None) -> None:
        self.layers, self.bos = layers, bos
        self.upload = upload or (lambda array: array)  # host array → what the decoder is fed (an OrtValue on its device)
        self.edit = edit or edit_in_place  # (cache, rows, offset) → the edited cache, where it lives
        self.clear()

    def clear(self) -> None:
        self.owner: list = []  # the Sequence of each row
        self.past: list = []  # 2L (R, H, P₀, Dh), keys of every layer then values: the last step's present.*
        self.rows = np.zeros(0, dtype=np.int64)  # (B,) the row of ``past`` each row continues from (edited before a step)
        self.offset = 0  # leading columns of ``past`` dropped before the next step
        self.valid = np.zeros((0, 0), dtype=bool)  # (B, P₀ - offset): which cache columns belong to each row
        self.cross: list[np.ndarray] = []  # 2L host arrays (B, H, S, Dh)
        self._cross_fed: list | None = None  # ``cross`` uploaded, until the rows change
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
        self._cross_fed = None
        if not self.owner:
            self.past = [np.zeros((len(owners), heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.rows, self.offset = np.zeros(0, dtype=np.int64), 0
            self.cross = [np.zeros((0, heads, 0, head_dim), dtype=cross[0].dtype) for _ in range(2 * self.layers)]
            self.valid, self.cross_mask = np.zeros((0, 0), dtype=bool), np.zeros((0, 0), dtype=bool)
        k = min(len(slots), len(owners))
        if k:
            rows, s_new = np.asarray(slots[:k], dtype=np.int64), mask.shape[1]
            if s_new > self.cross_mask.shape[1]:  # a longer source than any in the batch: widen (a copy, rare)
                grow = s_new - self.cross_mask.shape[1]
                self.cross = [np.pad(a, ((0, 0), (0, 0), (0, grow), (0, 0))) for a in self.cross]
                self.cross_mask = np.pad(self.cross_mask, ((0, 0), (0, grow)))
            self.valid[rows] = False  # the row keeps its cache columns, masked out: nothing to copy
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
            b_old, s_old, s_new = len(self.cross_mask), self.cross_mask.shape[1], mask.shape[1]
            s = max(s_old, s_new)
            # a new row continues from any cache row, all of it masked out: the first one (in a new batch, its own)
            start = np.zeros(b_new, dtype=np.int64) if len(self.rows) else np.arange(b_new, dtype=np.int64)
            self.rows = np.concatenate([self.rows, start])
            self.valid = np.concatenate([self.valid, np.zeros((b_new, p), dtype=bool)])
            # old and new rows written once into zeroed arrays of the joint source width, or not copied at all into
            # an empty batch (np.pad + concatenate copied every tensor twice more: ~5 % of a beam-4 batch of 32)
            self.cross = [_stack(old, new, s) for old, new in zip(self.cross, cross)]
            joint = np.zeros((b_old + b_new, s), dtype=bool)
            joint[:b_old, :s_old], joint[b_old:, :s_new] = self.cross_mask, mask
            self.cross_mask = joint
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
        self.rows = self.rows[idx]
        self.valid = self.valid[idx]
        self.cross, self._cross_fed = [a[idx] for a in self.cross], None
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
        """Drop leading cache columns no live row uses any more (before the next step)."""
        used = np.flatnonzero(self.valid.any(axis=0))
        first = int(used[0]) if len(used) else self.valid.shape[1]
        if first:
            self.offset += first
            self.valid = self.valid[:, first:]

    def reorder(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Beam search: row ``dst[i]`` continues from row ``src[i]`` (rows of one request), edited before the next
        step; cross K/V and masks are the same for every row of a request."""
        if len(dst):
            self.rows[dst] = self.rows[src]  # the right side is gathered into a temporary first: swaps are safe

    # ------------------------------------------------------------------------------ one step
    def feed(self, rows: np.ndarray | None = None, top_k: int = 1) -> tuple[dict, np.ndarray]:
        """The decoder's inputs for every row (or only ``rows``), and the self mask the step will have made."""
        self._apply_edits()
        valid, cross_mask, last = self.valid, self.cross_mask, self.last
        if rows is None:
            if self._cross_fed is None:
                self._cross_fed = [self.upload(a) for a in self.cross]
            cross = self._cross_fed
        else:
            valid, cross_mask, last = valid[rows], cross_mask[rows], last[rows]
            cross = [np.ascontiguousarray(a[rows]) for a in self.cross]
        self_mask = np.concatenate([valid, np.ones((len(last), 1), dtype=bool)], axis=1)  # the new token's column
        positions = valid.sum(axis=1, keepdims=True).astype(np.int64)  # each row's own length
        past = self.past if rows is None else self.edit(self.past, np.asarray(rows, dtype=np.int64), 0)
        return decoder_feed(np.ascontiguousarray(last[:, None]), positions, self_mask, cross_mask, past, cross,
                            top_k=top_k), self_mask

    def _apply_edits(self) -> None:
        """Rows and columns changed since the last step: edit the cache once, where it lives."""
        n = len(self.owner)
        cached = rows_of(self.past[0]) if self.past else 0
        identity = len(self.rows) == n == cached and (n == 0 or bool((self.rows == np.arange(n)).all()))
        if not identity or self.offset:
            self.past = self.edit(self.past, None if identity else self.rows, self.offset)
            self.rows, self.offset = np.arange(n, dtype=np.int64), 0

    def advanced(self, present: list, self_mask: np.ndarray) -> None:
        """The step ran: its ``present.*`` are the cache, row for row (one more column, valid for every row)."""
        self.past, self.valid = list(present), self_mask
        self.rows, self.offset = np.arange(len(self.owner), dtype=np.int64), 0


def _stack(old: np.ndarray, new: np.ndarray, width: int) -> np.ndarray:
    """``old`` rows then ``new`` rows ``(B, H, S, Dh)``, each zero-padded to ``width`` source positions (``new``
    itself when there is nothing to add: it is the encoder's output, or a copy of it, and the batch's own)."""
    if not len(old) and new.shape[2] == width:
        return new
    out = np.zeros((len(old) + len(new), new.shape[1], width, new.shape[3]), dtype=new.dtype)
    out[: len(old), :, : old.shape[2]] = old
    out[len(old):, :, : new.shape[2]] = new
    return out
