"""The seed every shipped model version was built with (``tabserve train``, ``tabserve build``): one constant."""

from __future__ import annotations

DEFAULT_SEED = 20261126
