"""The French "in / from" table: every entry a real CLDR territory, listed once, and consistent with the
spelling rules that decide the class (an elided d' only before a vowel, "en"/"au" by initial, plurals in -s)."""

import unicodedata

from babel import Locale

from models.data import places as P

VOWELS = set("aeiou")  # "y" of Yémen is a consonant: au Yémen, du Yémen


def initial(name: str) -> str:
    return unicodedata.normalize("NFD", name)[0].lower()


def test_every_code_is_a_cldr_territory_and_listed_once():
    cldr = set(Locale("fr").territories)
    listed = [code for codes in P._CLASSES.values() for code in codes.split()]
    assert len(listed) == len(set(listed)), sorted(c for c in listed if listed.count(c) > 1)
    assert set(listed) <= cldr, set(listed) - cldr
    assert set(P._CLASSES) == set(P.FORMS)
    assert len(listed) > 200  # most territories have an entry


def test_classes_agree_with_the_names_spelling():
    fr = Locale("fr").territories
    for code, cls in P.PLACE_CLASS.items():
        name, first = fr[code], initial(fr[code])
        if cls in ("vowel", "bare_vowel"):
            assert first in VOWELS or first == "h", (code, name, cls)  # d'Italie, d'Haïti
        elif cls in ("fem", "masc", "bare"):
            assert first not in VOWELS, (code, name, cls)  # de France, du Japon, de Cuba
            if first == "h":
                assert name in ("Hongrie", "Honduras"), (code, name)  # aspirated h: no elision
        elif cls == "plural":
            assert name.endswith("s") or name.startswith("Îles ") or name == "Fidji", (code, name)


def test_forms():
    assert P.in_and_from("FR", "France") == ("en France", "de France")
    assert P.in_and_from("IR", "Iran") == ("en Iran", "d'Iran")
    assert P.in_and_from("HN", "Honduras") == ("au Honduras", "du Honduras")
    assert P.in_and_from("US", "États-Unis") == ("aux États-Unis", "des États-Unis")
    assert P.in_and_from("MT", "Malte") == ("à Malte", "de Malte")
    assert P.in_and_from("AW", "Aruba") == ("à Aruba", "d'Aruba")
    assert P.in_and_from("HK", "R.A.S. chinoise de Hong Kong") is None


def test_place_sentences_put_english_articles_where_english_needs_them():
    assert P.place_sentences("NL", "Netherlands", "Pays-Bas")[0] == ("She lives in the Netherlands.", "Elle vit aux Pays-Bas.")
    assert P.place_sentences("DE", "Germany", "Allemagne")[1] == ("He comes from Germany.", "Il vient d'Allemagne.")
    assert P.place_sentences("EZ", "Eurozone", "zone euro") == []
    assert len(P.place_sentences("JP", "Japan", "Japon")) == len(P.PLACE_TEMPLATES)
