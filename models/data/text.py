"""The English → French corpus, built offline from CLDR (babel) and num2words.

The translator's domain is deliberately narrow (a demo, not general machine translation):

* dates, formatted by ``babel.dates.format_date`` in the full / long / medium styles (years 1900–2099);
* cardinal and ordinal numbers 0–999,999 spelled out by ``num2words``;
* quantities with CLDR units in long form (``babel.units.format_unit``), integers and decimals;
* CLDR territory and language names;

each alone and inside short template sentences. French text is kept exactly as CLDR writes it, including its
no-break spaces (U+00A0 before units, U+202F as thousands separator).

Territory and language names are a closed set (~290 and ~650), so each is written in every form: alone, in
every neutral template, and (territories the table in ``places`` lists) in sentences that need French's
articles and prepositions (*Elle vit au Japon.*). The alone form of every name is always in training; one
templated form of every name, drawn at random, is in no split at all: ``Corpus.heldout_forms``, the set that
shows whether a name was learned rather than a sentence. The other forms are shared out like everything else.

Splits are made on unique source sentences (no source sentence is in two splits); dates, numbers and quantities
are sampled from spaces far larger than the corpus, so most test values never occur in training. Every source
sentence is tagged with its kind and form (``Corpus.tags``) for the per-kind evaluation.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from babel import Locale
from babel.dates import format_date
from babel.units import format_unit
from num2words import num2words

from models.data.places import place_sentences

Pair = tuple[str, str]

# (English template, French template); "{}" is the value. The first entry of each list is "alone".
TEMPLATES: dict[str, list[Pair]] = {
    "date": [
        ("{}", "{}"),
        ("Today is {}.", "Nous sommes le {}."),
        ("The meeting is on {}.", "La réunion a lieu le {}."),
        ("The deadline is {}.", "La date limite est le {}."),
        ("She was born on {}.", "Elle est née le {}."),
        ("The shop opens on {}.", "Le magasin ouvre le {}."),
    ],
    "cardinal": [
        ("{}", "{}"),
        ("The answer is {}.", "La réponse est {}."),
        ("She wrote {} on the board.", "Elle a écrit {} au tableau."),
        ("The code is {}.", "Le code est {}."),
        ("He said {}.", "Il a dit {}."),
    ],
    "ordinal": [
        ("{}", "{}"),
        ("It is the {} floor.", "C'est le {} étage."),
        ("This is the {} day.", "C'est le {} jour."),
        ("He finished {}.", "Il a terminé {}."),
    ],
    "quantity": [
        ("{}", "{}"),
        ("The measurement shows {}.", "La mesure indique {}."),
        ("We need {}.", "Il nous faut {}."),
        ("The label says {}.", "L'étiquette indique {}."),
        ("The total is {}.", "Le total est de {}."),
    ],
    "territory": [
        ("{}", "{}"),
        ("Destination: {}.", "Destination : {}."),
        ("Country or region: {}.", "Pays ou région : {}."),
        ("The report mentions {}.", "Le rapport mentionne {}."),
        ("The list includes {}.", "La liste comprend {}."),
    ],
    "language": [
        ("{}", "{}"),
        ("She speaks {}.", "Elle parle {}."),
        ("The book is written in {}.", "Le livre est écrit en {}."),
        ("Language: {}.", "Langue : {}."),
        ("Subtitles in {}.", "Sous-titres en {}."),
        ("They speak {}.", "Ils parlent {}."),
        ("The menu is also in {}.", "Le menu existe aussi en {}."),
        ("Translate it into {}.", "Traduisez-le en {}."),
    ],
}
VALUE_KINDS = ("date", "cardinal", "ordinal", "quantity")
NAME_KINDS = ("territory", "language")
KINDS = VALUE_KINDS + NAME_KINDS
FORMS = ("alone", "templated")

DATE_FORMATS = ("full", "long", "medium")
FIRST_DAY, LAST_DAY = dt.date(1900, 1, 1), dt.date(2099, 12, 31)


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    n_dates: int = 26_000
    n_cardinals: int = 20_000
    n_ordinals: int = 14_000
    n_quantities: int = 26_000
    n_valid: int = 1_000
    n_test: int = 2_000
    min_test_names: int = 150  # sentences of each name kind the test split holds at least (a random 2,000 held ~60)


class Name(NamedTuple):
    code: str  # CLDR territory or language code
    en: str
    fr: str


def names(kind: str) -> list[Name]:
    """Every CLDR territory or language name that has a French form (the first code of a repeated English name)."""
    en, fr = Locale("en"), Locale("fr")
    table_en, table_fr = (en.territories, fr.territories) if kind == "territory" else (en.languages, fr.languages)
    seen, out = set(), []
    for code in sorted(table_en):
        src, tgt = table_en[code], table_fr.get(code)
        if tgt and src not in seen:
            seen.add(src)
            out.append(Name(code, src, tgt))
    return out


def name_sentences(kind: str, name: Name) -> list[Pair]:
    """Every templated form of one name: the neutral templates, and for territories the table's sentences."""
    neutral = [(en_t.format(name.en), fr_t.format(name.fr)) for en_t, fr_t in TEMPLATES[kind][1:]]
    return neutral + (place_sentences(name.code, name.en, name.fr) if kind == "territory" else [])


def units() -> list[str]:
    """CLDR unit ids that have long forms in both English and French."""
    en, fr = Locale("en")._data["unit_patterns"], Locale("fr")._data["unit_patterns"]
    # Some CLDR units (the "-person" durations) have no long pattern and babel echoes the unit id: skip them.
    return sorted(
        u
        for u in en
        if u in fr and all(u not in format_unit(2, u, "long", locale=loc) for loc in ("en", "fr"))
    )


def sample_number(rng: random.Random) -> int:
    """0–999,999 with every digit count equally likely (so small numbers are not drowned out)."""
    digits = rng.randint(1, 6)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def sample_value(rng: random.Random, kind: str, unit_ids: list[str]) -> Pair:
    """One (English, French) value of a category, without a template."""
    if kind == "date":
        day = FIRST_DAY + dt.timedelta(days=rng.randint(0, (LAST_DAY - FIRST_DAY).days))
        style = rng.choice(DATE_FORMATS)
        return format_date(day, style, locale="en"), format_date(day, style, locale="fr")
    if kind == "cardinal":
        n = sample_number(rng)
        return num2words(n, lang="en"), num2words(n, lang="fr")
    if kind == "ordinal":
        n = sample_number(rng)
        return num2words(n, to="ordinal", lang="en"), num2words(n, to="ordinal", lang="fr")
    if kind == "quantity":
        unit = rng.choice(unit_ids)
        shape = rng.random()
        if shape < 0.45:
            value: float | int = rng.randint(0, 100)
        elif shape < 0.7:
            value = sample_number(rng)
        else:
            value = round(rng.uniform(0, 1000 if rng.random() < 0.5 else 10), rng.choice((1, 2)))
        return format_unit(value, unit, "long", locale="en"), format_unit(value, unit, "long", locale="fr")
    raise ValueError(kind)


def templated(rng: random.Random, kind: str, value: Pair, alone_p: float = 0.35) -> Pair:
    en_t, fr_t = TEMPLATES[kind][0] if rng.random() < alone_p else rng.choice(TEMPLATES[kind][1:])
    return en_t.format(value[0]), fr_t.format(value[1])


@dataclass(frozen=True)
class Corpus:
    splits: dict[str, list[Pair]]  # train / valid / test
    heldout_forms: dict[str, list[Pair]]  # per name kind: one templated form of every name, in no split
    tags: dict[str, tuple[str, str]] = field(repr=False)  # source sentence → (kind, "alone" | "templated")

    def kind(self, source: str) -> tuple[str, str]:
        return self.tags[source]


@functools.lru_cache(maxsize=4)
def corpus(config: CorpusConfig = CorpusConfig()) -> Corpus:
    """Deterministic splits of unique-source (English, French) pairs, the held-out name forms, and the tags."""
    rng = random.Random(config.seed)
    unit_ids = units()
    by_source: dict[str, str] = {}
    tags: dict[str, tuple[str, str]] = {}
    alone_names: dict[str, str] = {}
    heldout: dict[str, list[Pair]] = {kind: [] for kind in NAME_KINDS}

    for kind in NAME_KINDS:
        for name in names(kind):
            if name.en not in alone_names:  # "Nauru" alone is the island, not its language (nauruan)
                alone_names[name.en] = name.fr
                tags[name.en] = (kind, "alone")
            sentences = name_sentences(kind, name)
            held = rng.randrange(len(sentences))
            for i, (src, tgt) in enumerate(sentences):
                tags[src] = (kind, "templated")
                if i == held:
                    heldout[kind].append((src, tgt))
                else:
                    by_source.setdefault(src, tgt)
    for kind, count in (
        ("date", config.n_dates),
        ("cardinal", config.n_cardinals),
        ("ordinal", config.n_ordinals),
        ("quantity", config.n_quantities),
    ):
        target = len(by_source) + count
        while len(by_source) < target:
            value = sample_value(rng, kind, unit_ids)
            src, tgt = templated(rng, kind, value)
            if src not in by_source and src not in alone_names:
                by_source[src] = tgt
                tags[src] = (kind, "alone" if src == value[0] else "templated")

    pairs = sorted(by_source.items())
    rng.shuffle(pairs)
    test, valid = pairs[: config.n_test], pairs[config.n_test : config.n_test + config.n_valid]
    train = pairs[config.n_test + config.n_valid :]
    # A random 2,000 holds ~60 sentences of each name kind: too few for a per-kind figure. Swap training name
    # sentences (from the end of the shuffled order) for test value sentences until each kind has its minimum.
    for kind in NAME_KINDS:
        short = config.min_test_names - sum(tags[s][0] == kind for s, _ in test)
        names_in_train = [i for i in range(len(train) - 1, -1, -1) if tags[train[i][0]][0] == kind][: max(0, short)]
        values_in_test = [i for i in range(len(test) - 1, -1, -1) if tags[test[i][0]][0] in VALUE_KINDS][: len(names_in_train)]
        for t, v in zip(names_in_train, values_in_test):
            train[t], test[v] = test[v], train[t]
    train += sorted(alone_names.items())  # every name alone is trained
    return Corpus({"train": train, "valid": valid, "test": test}, heldout, tags)


def build_corpus(config: CorpusConfig = CorpusConfig()) -> dict[str, list[Pair]]:
    """The train / valid / test splits (a fresh dict of fresh lists: callers may change them)."""
    return {k: list(v) for k, v in corpus(config).splits.items()}


def unseen_values(train_sources: set[str], n_per_kind: int = 50, seed: int = 12345) -> dict[str, list[Pair]]:
    """Fresh dates, numbers and quantities (alone and templated) whose source never occurs in training."""
    rng = random.Random(seed)
    unit_ids = units()
    out: dict[str, list[Pair]] = {}
    for kind in ("date", "cardinal", "ordinal", "quantity"):
        found: dict[str, str] = {}
        while len(found) < n_per_kind:
            src, tgt = templated(rng, kind, sample_value(rng, kind, unit_ids))
            if src not in train_sources:
                found.setdefault(src, tgt)
        out[kind] = list(found.items())
    return out


def write_splits(splits: dict[str, list[Pair]], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for src, tgt in pairs:
                f.write(json.dumps({"en": src, "fr": tgt}, ensure_ascii=False) + "\n")
