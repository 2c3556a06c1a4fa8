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


IMPORTED_CAPTIONER = "scenes"  # and the imported ViT + GPT-2 captioner
END = "<|endoftext|>"


def byte_level_bpe(directory: Path):
    """A GPT-2 style byte-level BPE trained here on a few hundred sentences (vocabulary 300, ``<|endoftext|>`` its one
    special token), saved in ``directory`` as ``GPT2TokenizerFast`` saves it (``tokenizer.json``); returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(sentences(), trainers.BpeTrainer(vocab_size=300, special_tokens=[END],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    GPT2TokenizerFast(tokenizer_object=bpe, bos_token=END, eos_token=END, unk_token=END, pad_token=END).save_pretrained(directory)
    return bpe


def tiny_captioner(directory: Path, *, size: int = 32, positions: int = 40, decoder: str = "gpt2",
                   init_std: float = 0.3, eos_gain: float = 2.0) -> Path:
    """A random-weight VisionEncoderDecoderModel (seeded): a ViT encoder (hidden 32) and a GPT-2 decoder with
    cross-attention (hidden 48: the checkpoint's encoder-to-decoder projection is exercised), its ViTImageProcessor,
    and a byte-level BPE tokenizer trained here on a few hundred sentences, saved as GPT-2's fast tokenizer
    (``tokenizer.json``). Weights are drawn wide (std ``init_std``) so that captions depend on the image.
    ``decoder="bert"``: a BERT decoder instead (not supported: the refusal tests)."""
    import torch
    from transformers import (
        BertConfig,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    bpe = byte_level_bpe(directory)
    eos = bpe.token_to_id(END)
    torch.manual_seed(0)
    encoder = ViTConfig(image_size=size, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    if decoder == "bert":
        dec = BertConfig(vocab_size=bpe.get_vocab_size(), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=96, max_position_embeddings=positions, is_decoder=True, add_cross_attention=True)
    else:
        dec = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=positions, n_embd=48, n_layer=2, n_head=2,
                         bos_token_id=eos, eos_token_id=eos, add_cross_attention=True, is_decoder=True,
                         initializer_range=init_std)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = eos, eos, eos
    model = VisionEncoderDecoderModel(config=config)
    if decoder == "gpt2":
        with torch.no_grad():  # an EOS some captions reach before the decoder's limit (the head is the embedding)
            model.decoder.transformer.wte.weight[eos] *= eos_gain
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    model.generation_config.max_length = positions
    model.save_pretrained(directory, safe_serialization=True)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5, 0.4, 0.3],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(directory)
    return directory
