"""Payment card numbers: 13 to 19 digits (spaces or dashes between groups) with a card-network
prefix and a valid Luhn check digit."""

from __future__ import annotations

PATTERN = r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-])"


def check(text: str, region: str) -> bool:
    from stdnum import luhn

    digits = "".join(c for c in text if c.isdigit())
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)
