"""Phone numbers: digit runs shaped like a number (optional +country code, area code in
parentheses, separators), confirmed against the real numbering plans by `phonenumbers`."""

from __future__ import annotations

PATTERN = (r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
           r"\d{1,5}(?:[ .-]?\d{2,5}){1,5}(?![\w/-])")


def check(text: str, region: str) -> bool:
    import phonenumbers

    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15:  # E.164 allows at most 15 digits
        return False
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)
