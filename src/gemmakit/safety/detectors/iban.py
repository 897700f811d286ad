"""International bank account numbers: country code, check digits and BBAN, compact or printed in
groups of four, confirmed by the ISO 13616 mod-97 checksum and the country's length
(python-stdnum)."""

from __future__ import annotations

PATTERN = r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"


def check(text: str, region: str) -> bool:
    from stdnum import iban

    return iban.is_valid(text)
