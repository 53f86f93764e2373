"""Spelling normalisation shared by training (to build category tables) and serving (to look values up)."""

from __future__ import annotations

import re
import unicodedata

_SEPARATORS = re.compile(r"[\W_]+")
"""Anything but a letter or digit of any script (``str.isalnum``) separates words."""


def normalise_key(value: str) -> str:
    """Case- and spacing-insensitive key: ``" suv - small "`` -> ``"SUV SMALL"``, ``"Mercedes-Benz"`` ->
    ``"MERCEDES BENZ"``, ``"Москва"`` -> ``"МОСКВА"``, full-width ``"ＡＢＣ"`` -> ``"ABC"`` (NFKC). Letters and digits
    of every script are kept; punctuation, symbols and spaces only separate words. Training stores categories and
    aliases in this form; serving looks them up in it."""
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    return _SEPARATORS.sub(" ", value.upper()).strip()
