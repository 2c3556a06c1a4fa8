"""A decoder model's tokenizer, as its ``config.json`` names it: the shipped models' SentencePiece tokenizer
(``tokenizer.model``, ``models.data.tokenizer``), or an imported Marian checkpoint's (``source.spm``, ``target.spm``,
``vocab.json``), read here with ``sentencepiece`` alone, or an imported captioner's ``tokenizer.json``, read with the
``tokenizers`` library: ``transformers`` is needed to import, never to serve.

``MarianTokenizer`` does what ``transformers``' tokenizer of the same name does for one source text and for generated
ids with ``skip_special_tokens=True`` (``tests/test_tokenizers.py`` holds them equal on a tokenizer built there): a
leading language code (``>>fr<<``) is one token; the text is cut into the source model's pieces, each looked up in
``vocab.json`` (unknown: ``<unk>``), and EOS is appended; generated ids become pieces through the same vocabulary,
special ones are dropped, and the target model joins the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from models.data.tokenizer import Tokenizer

SPIECE_UNDERLINE = "\u2581"


class MarianTokenizer:
    def __init__(self, directory: Path, files: dict, special: dict) -> None:
        self.source = spm.SentencePieceProcessor(model_file=str(directory / files["source"]))
        self.target = spm.SentencePieceProcessor(model_file=str(directory / files["target"]))
        self.vocab: dict[str, int] = json.loads((directory / files["vocab"]).read_text())
        self.pieces_of = {i: p for p, i in self.vocab.items()}
        self.pad_id, self.eos_id, self.unk_id = special["pad"], special["eos"], special["unk"]
        self.special_ids = {self.pad_id, self.eos_id, self.unk_id}

    def encode(self, text: str) -> list[int]:
        """The source ids of ``text``, without the EOS the caller appends (as the shipped tokenizer's)."""
        code = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        pieces = code + self.source.encode(text, out_type=str)
        return [self.vocab.get(p, self.unk_id) for p in pieces]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.pieces_of.get(int(i)) or self.target.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        kept = [p for i, p in zip(ids, self.pieces(ids)) if int(i) not in self.special_ids]
        return self.target.decode_pieces(kept).replace(SPIECE_UNDERLINE, " ").strip()


class HuggingFaceTokenizer:
    """A ``tokenizer.json`` (a fast tokenizer as ``save_pretrained`` writes it; an imported captioner's GPT-2
    byte-level BPE), read with the ``tokenizers`` library: generated ids → text as ``transformers``' ``decode(ids,
    skip_special_tokens=True)`` gives it, without the leading space a byte-level BPE writes before the first word."""

    def __init__(self, directory: Path, files: dict, special: dict) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        self.tokenizer = FastTokenizer.from_file(str(directory / files["file"]))
        self.pad_id, self.eos_id, self.unk_id = special["pad"], special["eos"], special["unk"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) or "" for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


def load_tokenizer(directory: Path, config: dict):
    """The tokenizer ``config.json`` names: ``{"kind": "marian", ...}`` for an imported Marian model,
    ``{"kind": "huggingface", "file": "tokenizer.json"}`` for an imported captioner, else the shipped
    ``tokenizer.model``."""
    spec = config.get("tokenizer")
    if isinstance(spec, dict) and spec.get("kind") == "marian":
        return MarianTokenizer(Path(directory), spec, config["special_tokens"])
    if isinstance(spec, dict) and spec.get("kind") == "huggingface":
        return HuggingFaceTokenizer(Path(directory), spec, config["special_tokens"])
    return Tokenizer.load(directory)
