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


def served_key(value: str) -> str:
    """The key a served category value is looked up by: ``normalise_key``, except that a value with a character
    beyond ASCII is never blank. A value of symbols only (``"€"``, ``"\u00a0"``) is then an unseen category
    (answered, with a warning) rather than a missing one, which is what the OpenAPI pattern
    (``api/openapi_inputs.CATEGORY_PATTERN``) says in every regular-expression dialect."""
    key = normalise_key(value)
    if key or value.isascii():
        return key
    return unicodedata.normalize("NFKC", value).upper().strip() or value
