"""How French says "in X" and "from X" for a CLDR territory: a table, not a guess.

French puts an article or a preposition before a place name that depends on the name's gender and number and on
whether it takes an article at all: *en France*, *au Japon*, *aux États-Unis*, *à Cuba*, *en Iran*; *de France*,
*du Japon*, *des États-Unis*, *de Cuba*, *d'Iran*. CLDR (babel) gives the names but not this, so each territory
code below is listed with its class, written down from French usage. A territory that is not listed (because
usage varies, e.g. *à/au Brunei*, *à la/en Jamaïque*, or the name is not a place one lives in, e.g. "Eurozone")
appears only in the neutral templates, where no article is needed.
"""

from __future__ import annotations

# class → (French for "in/to X", French for "from X"); "{}" is CLDR's French name.
FORMS: dict[str, tuple[str, str]] = {
    "fem": ("en {}", "de {}"),  # feminine, consonant: en France, de France
    "vowel": ("en {}", "d'{}"),  # vowel or mute h: en Italie, d'Italie; en Iran, d'Iran
    "masc": ("au {}", "du {}"),  # masculine, consonant or aspirated h: au Japon, du Honduras
    "plural": ("aux {}", "des {}"),  # aux États-Unis, des Philippines
    "bare": ("à {}", "de {}"),  # islands and city states without an article: à Cuba, de Malte
    "bare_vowel": ("à {}", "d'{}"),  # à Aruba, d'Aruba
}

_CLASSES: dict[str, str] = {
    "fem": "BE BG BO BY CH CI CN CO CZ DO CF FI FM FR GE GF GM GN GP GQ GR GW HR HU JO KP KR LT LV LY MD MK MN MQ "
    "MR MY NA NC NO NZ PF PG PL RO RS RU SE SI SK SL SO SY TH TN TR TZ ZM BA",
    "vowel": "002 003 005 009 013 142 150 419 AD AF AL AM AO AQ AR AT AU AZ DE DZ EC EE EG ER ES ET HT ID IE IL IN "
    "IQ IR IS IT SA SZ UA UG UY UZ ZA",
    "masc": "BD BF BI BJ BR BT BW BZ CA CD CG CL CM CR CV DK EH GA GH GL GT GY HN KE KG KH KW KZ LA LB LK LR LS "
    "LU ML MM MX MZ NE NG NI NP PA PE PK PT PY QA RW SD SN SR SS SV TD TG TJ TL TM VE VN VU XK YE ZW GB JP LI ME MA",
    "plural": "AE BS BM FJ KM MV NL PH PW SC US AX CC CK FK FO IC KY MH MP PN SB TC VG VI PS TF BQ 029",
    "bare": "BH CU CY DJ EA GG GI GU JE KN LC MC MF MG MS MT MU NR PM PR RE SG SH SM ST TA TT TW VC WF YT BL CW DG",
    "bare_vowel": "AG AI AW",
}

PLACE_CLASS: dict[str, str] = {code: cls for cls, codes in _CLASSES.items() for code in codes.split()}

# English puts "the" before these in a sentence: "She lives in the United States", "He comes from the Comoros".
ENGLISH_THE = {
    "US", "AE", "BS", "KM", "MV", "NL", "PH", "SC", "AX", "CC", "CK", "FK", "FO", "IC", "KY",
    "MH", "MP", "PN", "SB", "TC", "VG", "VI", "PS", "TF", "BQ", "029", "GB", "CF", "DO",
}  # fmt: skip

# (English, French) sentences that need the table: "{}" is the English name, {at} / {source} the French forms.
PLACE_TEMPLATES: list[tuple[str, str]] = [
    ("She lives in {}.", "Elle vit {at}."),
    ("He comes from {}.", "Il vient {source}."),
    ("Made in {}.", "Fabriqué {at}."),
    ("We are going to {}.", "Nous allons {at}."),
    ("The letter comes from {}.", "La lettre vient {source}."),
    ("She is back from {}.", "Elle rentre {source}."),
]


def in_and_from(code: str, french_name: str) -> tuple[str, str] | None:
    """("en France", "de France") for ("FR", "France"); None where the table has no entry for the code."""
    cls = PLACE_CLASS.get(code)
    if cls is None:
        return None
    at, source = FORMS[cls]
    return at.format(french_name), source.format(french_name)


def place_sentences(code: str, english_name: str, french_name: str) -> list[tuple[str, str]]:
    """Every table template filled with one territory; empty where the table has no entry for it."""
    forms = in_and_from(code, french_name)
    if forms is None:
        return []
    english = f"the {english_name}" if code in ENGLISH_THE else english_name
    return [(en.format(english), fr.format(at=forms[0], source=forms[1])) for en, fr in PLACE_TEMPLATES]
