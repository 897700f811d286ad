"""Built-in PII and secret detectors, one file per detector, named by its key.

A detector module defines `PATTERN` (a `regex` pattern for candidates; it must be usable with
partial matching, which is how streamed output knows how much text to hold back) and optionally
`check(text, region) -> bool`, a validator that turns a candidate into a finding (a Luhn check, an
IBAN checksum, a real phone-number plan). Modules load only when a rule names them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gemmakit.errors import ConfigError

DETECTORS: dict[str, str] = {
    "email": "gemmakit.safety.detectors.email",
    "phone": "gemmakit.safety.detectors.phone",
    "payment_card": "gemmakit.safety.detectors.payment_card",
    "iban": "gemmakit.safety.detectors.iban",
    "api_key": "gemmakit.safety.detectors.api_key",
}


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: Any  # a compiled `regex` pattern
    check: Callable[[str, str], bool] | None = None


def load(name: str) -> Detector:
    target = DETECTORS.get(name)
    if target is None:
        raise ConfigError(f"unknown detector '{name}' (available: {', '.join(DETECTORS)})")
    import regex

    mod = importlib.import_module(target)
    return Detector(name, regex.compile(mod.PATTERN, getattr(mod, "FLAGS", 0)),
                    getattr(mod, "check", None))
