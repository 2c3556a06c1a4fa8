"""The corpora: sizes, split hygiene, determinism, the domain as documented, scene format."""

import random
import re
from dataclasses import replace

import numpy as np
import pytest

from models.data import digits as D
from models.data import text as T
from models.data.tokenizer import train_tokenizer
from models.train import parse_caption


@pytest.fixture(scope="module")
def corpus():
    return T.build_corpus()


def test_translation_corpus_sizes_and_disjoint_splits(corpus):
    assert len(corpus["train"]) >= 50_000
    assert len(corpus["valid"]) == 1_000 and len(corpus["test"]) == 2_000
    sources = {k: {s for s, _ in v} for k, v in corpus.items()}
    assert all(len(sources[k]) == len(corpus[k]) for k in corpus)  # unique within a split
    assert not sources["train"] & sources["test"]
    assert not sources["train"] & sources["valid"]
    assert not sources["valid"] & sources["test"]


def test_translation_corpus_covers_the_documented_domain(corpus):
    src = [s for s, _ in corpus["train"]]
    tgt = [t for _, t in corpus["train"]]
    assert "vendredi 14 mars 2025" in T.format_date(T.dt.date(2025, 3, 14), "full", locale="fr")
    assert any(re.fullmatch(r"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \w+ \d+, \d{4}", s) for s in src)
    assert any(re.fullmatch(r"[A-Z][a-z]{2} \d+, \d{4}", s) for s in src)  # medium dates
    assert any("quatre-vingt" in t for t in tgt)
    assert any(t.endswith("ième") for t in tgt)  # ordinals
    assert any("\u00a0" in t for t in tgt) and any("\u202f" in t for t in tgt)  # CLDR spacing kept
    for name in ("Germany", "Japan", "German", "Swahili"):
        assert any(name in s for s in src)
    alone = sum(1 for s in src if not s.endswith("."))
    assert 0.2 < alone / len(src) < 0.6  # both alone and inside template sentences


def test_every_name_is_trained_alone_and_in_templates(corpus):
    train = dict(corpus["train"])
    territories = {n.en for n in T.names("territory")}
    for kind in T.NAME_KINDS:
        names = T.names(kind)
        assert len(names) > (250 if kind == "territory" else 600)
        # alone: every name, with its CLDR French (an English name that is also a territory means the territory)
        wrong = [n for n in names if (kind == "territory" or n.en not in territories) and train.get(n.en) != n.fr]
        assert not wrong, wrong[:5]
        # in templates: every name in trained sentences besides its alone form (most in three or more; a few
        # names with only the neutral templates gave two to the test and validation splits)
        sentences = {n.en: sum(s in train for s, _ in T.name_sentences(kind, n)) for n in names}
        assert min(sentences.values()) >= 1, min(sentences.items(), key=lambda kv: kv[1])
        assert sum(v >= 3 for v in sentences.values()) >= 0.95 * len(names)


def test_one_form_of_every_name_is_held_out_of_every_split():
    c = T.corpus()
    every_split = {s for pairs in c.splits.values() for s, _ in pairs}
    for kind in T.NAME_KINDS:
        held = c.heldout_forms[kind]
        assert len(held) == len(T.names(kind))  # one per name
        assert not {s for s, _ in held} & every_split
        assert all(c.kind(s) == (kind, "templated") for s, _ in held)


def test_every_sentence_is_tagged_and_the_test_split_holds_every_kind():
    c = T.corpus()
    for pairs in c.splits.values():
        assert all(c.kind(s)[0] in T.KINDS and c.kind(s)[1] in T.FORMS for s, _ in pairs)
    test_kinds = {c.kind(s) for s, _ in c.splits["test"]}
    assert {k for k, _ in test_kinds} == set(T.KINDS)
    assert c.kind("France") == ("territory", "alone") and c.kind("Nauru") == ("territory", "alone")
    assert c.kind("She speaks German.") == ("language", "templated")


def test_place_sentences_use_the_table_articles(corpus):
    pairs = dict(p for kind in T.NAME_KINDS for n in T.names(kind) for p in T.name_sentences(kind, n))
    assert pairs["She lives in France."] == "Elle vit en France."
    assert pairs["She lives in Japan."] == "Elle vit au Japon."
    assert pairs["She lives in the United States."] == "Elle vit aux États-Unis."
    assert pairs["He comes from Italy."] == "Il vient d'Italie."
    assert pairs["Made in Cuba."] == "Fabriqué à Cuba."
    assert "She lives in Hong Kong SAR China." not in pairs  # not in the table: neutral templates only


def test_corpus_is_deterministic():
    small = replace(T.CorpusConfig(), n_dates=300, n_cardinals=300, n_ordinals=300, n_quantities=300, n_valid=50, n_test=50)
    assert T.build_corpus(small) == T.build_corpus(small)
    assert T.build_corpus(small) != T.build_corpus(replace(small, seed=1))


def test_unseen_values_are_not_in_training(corpus):
    train = {s for s, _ in corpus["train"]}
    fresh = T.unseen_values(train, n_per_kind=20)
    assert set(fresh) == {"date", "cardinal", "ordinal", "quantity"}
    assert all(s not in train for pairs in fresh.values() for s, _ in pairs)


def test_tokenizer_roundtrips_french_exactly(corpus):
    texts = [t for pair in random.Random(0).sample(corpus["train"], 5000) for t in pair]
    tok = train_tokenizer(texts, 600)
    for _, fr in corpus["test"][:300]:
        assert tok.decode(tok.encode(fr)) == fr
    digit_pieces = [p.lstrip("\u2581") for p in tok.pieces(tok.encode("Il a 1234 ans"))]
    assert [p for p in digit_pieces if any(ch.isdigit() for ch in p)] == ["1", "2", "3", "4"]  # one piece per digit
    assert tok.unk_id not in tok.encode("Ωmega ✓ 漢字")  # byte fallback: nothing is unknown


def test_digit_split_is_fixed_and_stratified():
    a, b = D.digit_splits(), D.digit_splits()
    np.testing.assert_array_equal(a["test"].labels, b["test"].labels)
    assert len(a["train"].labels) + len(a["test"].labels) == 1797
    counts = np.bincount(a["test"].labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert a["train"].images.min() >= 0 and a["train"].images.max() <= 1


def test_scene_layout_and_caption():
    split = D.digit_splits()["test"]
    canvases, captions, layouts = D.make_scenes(split, 200, seed=0)
    assert canvases.shape == (200, 32, 32) and canvases.dtype == np.uint8
    assert {len(l) for l in layouts} == {1, 2, 3}
    for canvas, caption, layout in zip(canvases, captions, layouts):
        assert parse_caption(caption) == layout
        for q in range(4):
            r, c = divmod(q, 2)
            cell = canvas[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
            assert (cell.max() > 0) == (q in layout)  # digits only in their quadrants, black elsewhere
    assert D.caption_for({0: 7, 3: 2}) == "seven in the top left and two in the bottom right"
    assert D.render_scene({1: np.ones((8, 8), np.float32)})[0:16, 16:32].min() == 255


def test_train_and_test_scenes_use_disjoint_digit_images():
    data = D.load_digits()
    splits = D.digit_splits()
    as_bytes = lambda imgs: {img.tobytes() for img in (imgs * 16).round().astype(np.uint8)}
    train_imgs, test_imgs = as_bytes(splits["train"].images), as_bytes(splits["test"].images)
    # sklearn digits contains a few exact duplicate images; apart from those the splits share nothing
    assert len(train_imgs & test_imgs) <= 5
    assert len(data.target) == 1797
