"""Tiny Hugging Face checkpoints, built with ``transformers`` itself and saved with ``save_pretrained`` (no download):
what the import tests and the service tests' repository import."""

from pathlib import Path

LABELS = {0: "cat", 1: "dog", 2: "fox"}
IMPORTED = "pets"  # the imported classifier in the tests' model repository (conftest.py)
IMPORTED_TRANSLATOR = "opus"  # and the imported Marian translator


def tiny_vit(directory: Path, *, channels: int = 3, size: int = 32, layers: int = 2, mean=(0.5, 0.4, 0.3),
             std=(0.2, 0.25, 0.3)) -> Path:
    """A random-weight ViTForImageClassification (seeded) with its ViTImageProcessor, in ``directory``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=size, patch_size=8, num_channels=channels, hidden_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, intermediate_size=64, num_labels=len(LABELS), id2label=LABELS,
                       label2id={v: k for k, v in LABELS.items()})
    ViTForImageClassification(config).save_pretrained(directory, safe_serialization=True)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean)[:channels],
                      image_std=list(std)[:channels]).save_pretrained(directory)
    return directory


WORDS = ["the", "cat", "dog", "house", "tree", "river", "city", "girl", "boy", "sees", "has", "likes", "near", "big", "small", "red", "green", "old", "new", "one", "two", "three", "apple", "bread", "water", "sun", "moon", "friday", "monday", "morning", "evening", "walks", "runs", "sleeps", "reads", "writes"]


def sentences(n: int = 400, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "." for _ in range(n)]


def tiny_marian(directory: Path, *, layers: int = 2, positions: int = 64, init_std: float = 0.4,
                eos_bias: float = 3.5) -> Path:
    """A random-weight MarianMTModel (seeded; weights drawn wide, std 0.4, so that what it writes depends on what it
    reads: with the default 0.02 every input gave the same output) with a MarianTokenizer whose SentencePiece model is trained here on a few
    hundred sentences (source.spm = target.spm, one vocab.json: "</s>" 0, "<unk>" 1, "<pad>" last, as OPUS-MT's)."""
    import io
    import json

    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences()), model_writer=buf, vocab_size=120,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0)
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) != "<unk>"]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"), str(directory / "vocab.json"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=positions, pad_token_id=vocab["<pad>"], eos_token_id=0,
                          decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=None, scale_embedding=True,
                          init_std=init_std)
    model = MarianMTModel(config)
    with torch.no_grad():  # a bias that matters, and an EOS that some outputs reach before the decoder's limit
        model.final_logits_bias.normal_(0.0, 1.0)
        model.final_logits_bias[0, 0] += eos_bias
    model.generation_config.num_beams, model.generation_config.max_length = 4, positions
    model.generation_config.bad_words_ids = [[vocab["<pad>"]]]  # as OPUS-MT's: the pad is never generated
    model.save_pretrained(directory, safe_serialization=True)
    return directory
