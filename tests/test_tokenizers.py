"""service.tokenizers: an imported Marian model's tokenizer, read with sentencepiece alone, against transformers'
MarianTokenizer on the same files, and an imported captioner's ``tokenizer.json``, read with ``tokenizers``, against
transformers' GPT2TokenizerFast (both built here: tests/hfkit.py)."""

import json

import pytest
from transformers import MarianTokenizer as Reference

from models.checkpoint import CHECKPOINTS
from models.data.tokenizer import Tokenizer
from service.tokenizers import HuggingFaceTokenizer, MarianTokenizer, load_tokenizer
from tests.hfkit import END, byte_level_bpe, sentences, tiny_marian

FILES = {"kind": "marian", "source": "source.spm", "target": "target.spm", "vocab": "vocab.json"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    source = tiny_marian(tmp_path_factory.mktemp("hf") / "marian")
    vocab = json.loads((source / "vocab.json").read_text())
    special = {"pad": vocab["<pad>"], "eos": vocab["</s>"], "unk": vocab["<unk>"], "bos": vocab["<pad>"]}
    return MarianTokenizer(source, FILES, special), Reference.from_pretrained(source), special, source


TEXTS = sentences(40, seed=3) + ["Zebra quokka!", "Ünïcödé — «quotes» and 12,345", ">>fr<< The cat sees the dog.", "  spaced   out  "]


def test_source_ids_are_transformers_ids(pair):
    ours, reference, special, _ = pair
    for text in TEXTS:
        assert ours.encode(text) + [special["eos"]] == reference(text)["input_ids"], text


def test_generated_ids_decode_as_transformers_decodes_them(pair):
    ours, reference, special, _ = pair
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        with_specials = [special["pad"]] + ids + [special["pad"], special["unk"]]
        assert ours.decode(with_specials) == reference.decode(with_specials, skip_special_tokens=True), text
    assert ours.pieces(reference("The cat.")["input_ids"]) == reference.convert_ids_to_tokens(reference("The cat.")["input_ids"])


def test_the_config_names_the_tokenizer(pair):
    _, _, special, source = pair
    assert isinstance(load_tokenizer(source, {"tokenizer": FILES, "special_tokens": special}), MarianTokenizer)
    assert isinstance(load_tokenizer(CHECKPOINTS / "translator", {"tokenizer": "tokenizer.model"}), Tokenizer)


def test_a_tokenizer_json_decodes_generated_ids_as_transformers_decodes_them(tmp_path):
    """What a captioner generates (GPT-2's byte-level BPE): the text of ``decode(ids, skip_special_tokens=True)``,
    without the space before the first word; the pieces are the tokenizer's own."""
    from transformers import AutoTokenizer

    eos = byte_level_bpe(tmp_path).token_to_id(END)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    config = {"tokenizer": {"kind": "huggingface", "file": "tokenizer.json"}, "special_tokens": {"pad": eos, "eos": eos, "unk": eos}}
    ours = load_tokenizer(tmp_path, config)
    assert isinstance(ours, HuggingFaceTokenizer)
    for text in TEXTS:
        ids = reference(" " + text)["input_ids"]  # as a decoder writes them: each word after a space
        assert ours.encode(" " + text) == ids, text
        assert ours.decode(ids + [eos]) == reference.decode(ids + [eos], skip_special_tokens=True).strip(), text
        assert ours.pieces(ids) == reference.convert_ids_to_tokens(ids)
    assert ours.decode([eos]) == ""
