"""The English → French corpus, built offline from CLDR (babel) and num2words.

The translator's domain is deliberately narrow (a demo, not general machine translation):

* dates, formatted by ``babel.dates.format_date`` in the full / long / medium styles (years 1900–2099);
* cardinal and ordinal numbers 0–999,999 spelled out by ``num2words``;
* quantities with CLDR units in long form (``babel.units.format_unit``), integers and decimals;
* CLDR territory and language names;

each alone and inside short template sentences. French text is kept exactly as CLDR writes it, including its
no-break spaces (U+00A0 before units, U+202F as thousands separator).

Splits are made on unique source sentences (no source sentence is in two splits). Every territory and
language name occurs in several forms (alone and in templates), so a name held out in one form is still
learned from the others; dates, numbers and quantities are sampled from spaces far larger than the corpus,
so most test values never occur in training.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

from babel import Locale
from babel.dates import format_date
from babel.units import format_unit
from num2words import num2words

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
    ],
}

DATE_FORMATS = ("full", "long", "medium")
FIRST_DAY, LAST_DAY = dt.date(1900, 1, 1), dt.date(2099, 12, 31)
NAME_FORMS = 4  # each territory / language name: alone + 3 template sentences


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    n_dates: int = 26_000
    n_cardinals: int = 20_000
    n_ordinals: int = 14_000
    n_quantities: int = 26_000
    n_valid: int = 1_000
    n_test: int = 2_000


def _names(kind: str) -> list[Pair]:
    en, fr = Locale("en"), Locale("fr")
    table_en, table_fr = (en.territories, fr.territories) if kind == "territory" else (en.languages, fr.languages)
    seen, pairs = set(), []
    for code in sorted(table_en):
        src, tgt = table_en[code], table_fr.get(code)
        if tgt and src not in seen:
            seen.add(src)
            pairs.append((src, tgt))
    return pairs


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


def build_corpus(config: CorpusConfig = CorpusConfig()) -> dict[str, list[Pair]]:
    """Deterministic train/valid/test splits of unique-source (English, French) pairs."""
    rng = random.Random(config.seed)
    unit_ids = units()
    by_source: dict[str, str] = {}

    def add(pair: Pair) -> None:
        by_source.setdefault(pair[0], pair[1])

    for kind in ("territory", "language"):
        for name in _names(kind):
            add(name)  # alone
            for en_t, fr_t in rng.sample(TEMPLATES[kind][1:], NAME_FORMS - 1):
                add((en_t.format(name[0]), fr_t.format(name[1])))
    for kind, count in (
        ("date", config.n_dates),
        ("cardinal", config.n_cardinals),
        ("ordinal", config.n_ordinals),
        ("quantity", config.n_quantities),
    ):
        target = len(by_source) + count
        while len(by_source) < target:
            add(templated(rng, kind, sample_value(rng, kind, unit_ids)))

    pairs = sorted(by_source.items())
    rng.shuffle(pairs)
    test, valid = pairs[: config.n_test], pairs[config.n_test : config.n_test + config.n_valid]
    train = pairs[config.n_test + config.n_valid :]
    return {"train": train, "valid": valid, "test": test}


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
