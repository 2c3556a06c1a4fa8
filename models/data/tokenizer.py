"""SentencePiece tokenizers (Kudo & Richardson, 2018), trained here and shipped beside the weights.

Fixed special ids shared by every model: pad 0, unk 1, bos 2, eos 3. Normalization is ``identity`` so that
decoding gives back exactly the characters the corpus uses (CLDR's no-break spaces included); digits are
split into single pieces so that numbers never seen in training are still spelled with known tokens; byte
fallback means no input character is ever unknown.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FILENAME = "tokenizer.model"


class Tokenizer:
    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        return cls((path / FILENAME if path.is_dir() else path).read_bytes())

    def save(self, directory: str | Path) -> Path:
        out = Path(directory) / FILENAME
        out.write_bytes(self.model_proto)
        return out

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS_ID or i == UNK_ID])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> Tokenizer:
    """Train a SentencePiece model in memory (deterministic for the same texts in the same order)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        normalization_rule_name="identity",
        split_digits=True,
        byte_fallback=model_type != "word",
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return Tokenizer(buffer.getvalue())
