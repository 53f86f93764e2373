"""Spelling normalisation shared by training (to build category tables) and serving (to look values up)."""

from __future__ import annotations

import re

_NON_ALNUM = re.compile(r"[^0-9A-Z]+")


def normalise_key(value: str) -> str:
    """Case- and spacing-insensitive key: ``" suv - small "`` -> ``"SUV SMALL"``, ``"Mercedes-Benz"`` ->
    ``"MERCEDES BENZ"``. Training stores categories and aliases in this form; serving looks them up in it."""
    return _NON_ALNUM.sub(" ", value.upper()).strip()
