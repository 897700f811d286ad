"""JSON schema -> grammar constraints for the engine.

Forced tool calls (`tool_choice: "required"` or a named function) and structured answers
(`response_format` json_object / json_schema) become a `Constraint(kind="grammar")` holding a
llama.cpp GBNF grammar, compiled here — before the request reaches an engine:

1. `schema.plan_schema` rewrites the schema into the shapes the compiler handles exactly and leaves
   out what a grammar cannot enforce (checked with jsonschema after generation instead);
2. llama-cpp-python's maintained converter (`llama_cpp.llama_grammar.SchemaConverter`) compiles
   it, with gemmakit's additions: numeric ranges for `integer` *and* `number`, calendar-exact
   dates, e-mail addresses, objects in declaration order whose extra keys cannot repeat a declared
   one, tuples (`prefixItems` with `items`), strings that cannot hold raw control characters;
3. JSON's canonical spacing replaces the converter's optional whitespace (`gbnf.py`);
4. with a token budget (`max_tokens`), the grammar is rewritten to accept only texts that fit in
   it (`gbnf.py` says why that is sound), and a budget that cannot hold even the shortest valid
   reply is a 400 naming `max_tokens`;
5. llama.cpp's own grammar parser reads the result, so a grammar it would refuse is a 400 here and
   never a failed engine step.

The forced-call grammar matches the call syntax the prompt asks for (prompts/gemma_tools.py)::

    {"name": "get_weather", "parameters": {...that tool's schema...}}
    [{"name": ..., "parameters": ...}, ...]          # parallel_tool_calls: a non-empty list

The transformers engine will use xgrammar (docs/tools.md says why); it takes the same GBNF
(without token elements: budgets there count characters).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gemmakit.errors import ConfigError, InvalidRequestError, UnsupportedError
from gemmakit.tools import gbnf as gb
from gemmakit.tools.schema import SchemaError, ToolSpec, check_schema, plan_schema
from gemmakit.types import Capabilities, Constraint

log = logging.getLogger("gemmakit.tools")

MAX_GRAMMAR_BYTES = 512 * 1024
"""Largest grammar compiled without a budget (a budgeted one is bounded by gbnf.MAX_PAIRS)."""
MAX_CALLS_PER_REPLY = 8
"""A forced reply holds at most this many parallel calls (the grammar then closes the list)."""
_MAX_INT_DIGITS = 16  # the converter's own integers have at most 16 digits
_SIG_DIGITS = 15
"""Digits of a bounded decimal: any two decimals of at most 15 significant digits parse to
different doubles (DBL_DIG), so a decimal the grammar keeps above an exclusive bound stays above
it once parsed."""
_FRACTION_DIGITS = 6
"""Decimals a grammar writes after the point (0.000001 resolution; keeps number rules small)."""
_MAX_REPEAT = 2000  # llama.cpp refuses a {m,n} repetition above this

# JSON string characters: anything but '"', '\' and control characters (U+0000-U+001F), or a
# two-character escape. The converter's rule lets raw control characters through, which strict
# JSON forbids; \uXXXX escapes are left out (every character can be written without one, and a
# surrogate pair would count two characters for maxLength but one for jsonschema).
_CHAR_RULE = r'[^"\\\x00-\x1F] | "\\" ["\\/bfnrt]'
_NEVER = r"[^\x00-\U0010FFFF]"  # matches nothing: a schema no value satisfies
_NUMBER_RULE = (f'("-"? integral-part) ("." [0-9]{{1,{_FRACTION_DIGITS}}})? '
                '([eE] [-+]? [0-9] [0-9]?) space')
"""The converter's number with at most six decimals and exponents of at most two digits: a longer
exponent can overflow a double to infinity, which is not JSON once the call is re-serialized."""

# Calendar dates 0001-01-01 .. 9999-12-31 exactly (29 February in leap years only), as
# datetime.date.fromisoformat and jsonschema's "date" format accept them.
_DATE_RULES = {  # bodies name earlier rules as {key} (the names the converter gives them)
    "year": '[1-9] [0-9] [0-9] [0-9] | "0" [1-9] [0-9] [0-9] | "00" [1-9] [0-9] | "000" [1-9]',
    "leap2": '[02468] [48] | [13579] [26] | [2468] "0"',  # 04, 08, ..., 96
    "leap-year": '[0-9] [0-9] {leap2} | {leap2} "00"',
    "d28": '"0" [1-9] | "1" [0-9] | "2" [0-8]',
    "d30": '{d28} | "29" | "30"',
    "d31": '{d30} | "31"',
    "date": ('{year} "-" (("0" [13578] | "1" [02]) "-" {d31} | ("0" [469] | "11") "-" {d30} '
             '| "02-" {d28}) | {leap-year} "-02-29"'),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9] [0-9] [0-9])? '
             '("Z" | ("+" | "-") ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'),
}
# E-mail addresses: a dot-atom local part and a domain of letter/digit/hyphen labels ending in a
# letters-only top-level label — a conservative subset of RFC 5321 that e-mail validators accept.
_EMAIL_RULES = {
    "atom": "[A-Za-z0-9_%+-]+",
    "label": '[A-Za-z0-9]+ ("-" [A-Za-z0-9]+)*',
    "email": '{atom} ("." {atom})* "@" ({label} ".")+ [A-Za-z] [A-Za-z]+',
}


class BudgetError(InvalidRequestError):
    """max_tokens cannot hold even the shortest reply the constraint allows."""

    code = "max_tokens_too_small"


# --- integer ranges as grammar --------------------------------------------------------------
def _digits_between(a: str, b: str) -> list[str]:
    """GBNF alternatives matching every decimal string of len(a) digits in [a, b] (a <= b)."""
    if a == b:
        return [f'"{a}"']
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return [f"[{a[0]}-{b[0]}] [0-9]{{{rest}}}"]
    if a[0] == b[0]:
        return [f'"{a[0]}" ({" | ".join(_digits_between(a[1:], b[1:]))})']
    out = [f'"{a[0]}" ({" | ".join(_digits_between(a[1:], "9" * rest))})']
    lo, hi = int(a[0]) + 1, int(b[0]) - 1
    if lo <= hi:
        out.append(f"[{lo}-{hi}] [0-9]{{{rest}}}")
    out.append(f'"{b[0]}" ({" | ".join(_digits_between("0" * rest, b[1:]))})')
    return out


def _nonneg_groups(lo: int, hi: int | None) -> list[tuple[int, list[str]]]:
    """(digit count, alternatives) for the JSON integers n >= 0 with lo <= n <= hi (hi None: up
    to 16 digits), grouped by their number of digits."""
    top = hi if hi is not None else 10 ** _MAX_INT_DIGITS - 1
    out = []
    for n_digits in range(len(str(lo)), len(str(top)) + 1):
        a = max(lo, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        b = min(top, 10 ** n_digits - 1)
        if a <= b:
            out.append((n_digits, _digits_between(str(a), str(b))))
    return out


def _nonneg_range(lo: int, hi: int | None) -> list[str]:
    return [alt for _, alts in _nonneg_groups(lo, hi) for alt in alts]


def int_range_rule(minimum: int | None, maximum: int | None) -> str:
    """A GBNF expression matching exactly the JSON integers in [minimum, maximum]."""
    if minimum is not None and maximum is not None and minimum > maximum:
        raise SchemaError(f"minimum {minimum} is greater than maximum {maximum}")
    alts: list[str] = []
    if minimum is None or minimum < 0:  # negative part, by magnitude
        mag_lo = 1 if maximum is None or maximum >= 0 else -maximum
        mag_hi = None if minimum is None else -minimum
        alts += [f'"-" ({a})' for a in _nonneg_range(mag_lo, mag_hi)]
    if maximum is None or maximum >= 0:
        alts += _nonneg_range(max(minimum or 0, 0), maximum)
    return "(" + " | ".join(alts) + ")"


def _exact(bound: Any) -> Decimal:
    """The exact value jsonschema compares with (Python compares ints and floats exactly)."""
    return Decimal(bound) if isinstance(bound, int) else Decimal(float(bound))


def _int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """Integer bounds of an integer schema (fractional bounds rounded inwards)."""
    lo: int | None = None
    hi: int | None = None
    if "minimum" in schema:
        lo = math.ceil(_exact(schema["minimum"]))
    if "exclusiveMinimum" in schema:
        x = math.floor(_exact(schema["exclusiveMinimum"])) + 1
        lo = x if lo is None else max(lo, x)
    if "maximum" in schema:
        hi = math.floor(_exact(schema["maximum"]))
    if "exclusiveMaximum" in schema:
        x = math.ceil(_exact(schema["exclusiveMaximum"])) - 1
        hi = x if hi is None else min(hi, x)
    return lo, hi


# --- decimal ranges as grammar --------------------------------------------------------------
def _decimal(bound: Any) -> Decimal:
    """The decimal a bound is compared as. A float compares with a parsed float: its shortest
    repr is what the grammar compares digits with (exact for |x| >= 2**53, where floats are
    integers and parsed integers compare exactly)."""
    if isinstance(bound, int):
        return Decimal(bound)
    x = float(bound)
    return Decimal(x) if abs(x) >= 2 ** 53 else Decimal(repr(x))


def _split(d: Decimal) -> tuple[int, str]:
    """(integer part, fraction digits without trailing zeros) of d >= 0."""
    n = int(d)  # truncation == floor for d >= 0
    frac = format(d - n, "f")
    digits = frac.split(".")[1].rstrip("0") if "." in frac else ""
    return n, digits


def _fraction(lo: str | None, lo_excl: bool, hi: str | None, hi_excl: bool, k: int
              ) -> tuple[bool, list[str]]:
    """Fractions 0.s with len(s) <= k and lo <(=) 0.s <(=) hi, lo/hi given by their digits (None:
    no bound). Returns (whether the empty s — no fraction at all — is allowed, GBNF alternatives
    for the non-empty digit strings s)."""
    if lo == "" and not lo_excl:
        lo = None
    empty = (lo is None) and (hi is None or hi != "" or not hi_excl)
    if k == 0:
        return empty, []
    alts: list[str] = []
    l0 = int(lo[0]) if lo else 0
    h0 = int(hi[0]) if hi else 0
    lo_min = 0 if lo is None else l0
    hi_max = 9 if hi is None else h0
    for d in range(lo_min, hi_max + 1):
        sub_lo = None if lo is None or d > l0 else lo[1:]
        sub_hi = None if hi is None or d < h0 else hi[1:]
        if sub_lo is None and sub_hi is None:
            alts.append(f'"{d}" [0-9]{{0,{k - 1}}}' if k > 1 else f'"{d}"')
            continue
        e_ok, sub = _fraction(sub_lo, lo_excl, sub_hi, hi_excl, k - 1)
        if sub:
            tail = f"({' | '.join(sub)})"
            alts.append(f'"{d}" {tail}?' if e_ok else f'"{d}" {tail}')
        elif e_ok:
            alts.append(f'"{d}"')
    return empty, _squash(alts, k)


def _squash(alts: list[str], k: int) -> list[str]:
    """Digits whose tails are all free share one character class."""
    free = [a for a in alts if a.endswith(f"[0-9]{{0,{k - 1}}}") or (k == 1 and len(a) == 3)]
    if len(free) < 2:
        return alts
    digits = sorted(a[1] for a in free)
    runs: list[list[str]] = []
    for dgt in digits:
        if runs and int(dgt) == int(runs[-1][-1]) + 1:
            runs[-1].append(dgt)
        else:
            runs.append([dgt])
    tail = f" [0-9]{{0,{k - 1}}}" if k > 1 else ""
    rest = [a for a in alts if a not in free]
    return [f"[{r[0]}-{r[-1]}]{tail}" if len(r) > 1 else f'"{r[0]}"{tail}' for r in runs] + rest


def _frac_rule(lo: str | None, lo_excl: bool, hi: str | None, hi_excl: bool, k: int
               ) -> str | None:
    """GBNF for the optional '.digits' part with the fraction in range; None if nothing fits."""
    empty, alts = _fraction(lo, lo_excl, hi, hi_excl, k)
    if not alts:
        return '""' if empty else None
    body = f'"." ({" | ".join(alts)})'
    return f"({body})?" if empty else body


def _magnitude_rule(a: Decimal, a_excl: bool, b: Decimal | None, b_excl: bool) -> list[str]:
    """Alternatives for the decimals m (no sign, no exponent, at most 15 significant digits when
    there is a fraction) with a <(=) m <(=) b, 0 <= a."""
    out: list[str] = []
    n_lo, f_lo = _split(a)
    if b is not None:
        n_hi, f_hi = _split(b)
        if n_lo > n_hi:
            return out
    else:
        n_hi, f_hi = None, None

    def k_for(n_digits: int) -> int:
        return max(0, min(_FRACTION_DIGITS, _SIG_DIGITS - n_digits))

    # The integer part n_lo, with the fraction above a's (and below b's if n_hi == n_lo).
    same = n_hi == n_lo
    frac = _frac_rule(f_lo, a_excl, f_hi if same else None, b_excl if same else False,
                      k_for(len(str(n_lo))))
    if frac is not None:
        out.append(f'"{n_lo}" {frac}')
    if same:
        return out
    # Integer parts strictly between: any fraction.
    mid_hi = None if n_hi is None else n_hi - 1
    if mid_hi is None or mid_hi >= n_lo + 1:
        for n_digits, alts in _nonneg_groups(n_lo + 1, mid_hi):
            k = k_for(n_digits)
            frac_any = f' ("." [0-9]{{1,{k}}})?' if k else ""
            out.append(f"({' | '.join(alts)}){frac_any}")
    if n_hi is not None:
        frac = _frac_rule(None, False, f_hi, b_excl, k_for(len(str(n_hi))))
        if frac is not None:
            out.append(f'"{n_hi}" {frac}')
    return out


def number_range_rule(minimum: Any = None, maximum: Any = None, *, exclusive_minimum: Any = None,
                      exclusive_maximum: Any = None) -> str:
    """A GBNF expression for JSON numbers within the bounds, every one of which jsonschema accepts
    after Python parses it (see _SIG_DIGITS). No exponents; a fraction keeps the number within 15
    significant digits; integers go to 16 digits as the converter's do."""
    lo = lo_excl = hi = hi_excl = None
    for value, excl in ((minimum, False), (exclusive_minimum, True)):
        if value is not None:
            d = _decimal(value)
            if lo is None or d > lo or (d == lo and excl):
                lo, lo_excl = d, excl
    for value, excl in ((maximum, False), (exclusive_maximum, True)):
        if value is not None:
            d = _decimal(value)
            if hi is None or d < hi or (d == hi and excl):
                hi, hi_excl = d, excl
    alts: list[str] = []
    zero = Decimal(0)
    # v >= 0
    if hi is None or hi > 0 or (hi == 0 and not hi_excl):
        a, a_excl = (zero, False) if lo is None or lo < 0 else (lo, bool(lo_excl))
        alts += _magnitude_rule(a, a_excl, hi, bool(hi_excl))
    # v < 0, written as "-" and its magnitude m > 0
    if lo is None or lo < 0:
        if hi is None or hi >= 0:
            m_lo, m_lo_excl = zero, True
        else:
            m_lo, m_lo_excl = -hi, bool(hi_excl)
        m_hi, m_hi_excl = (None, False) if lo is None else (-lo, bool(lo_excl))
        alts += [f'"-" ({x})' for x in _magnitude_rule(m_lo, m_lo_excl, m_hi, m_hi_excl)]
    if not alts:
        raise SchemaError("no number satisfies its bounds")
    return "(" + " | ".join(alts) + ")"


# --- the converter, with gemmakit's additions -----------------------------------------------------
def _converter():
    try:
        from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("grammar constraints need llama-cpp-python: "
                          "pip install 'gemmakit[llamacpp]'") from e

    class Converter(SchemaConverter):
        """The library's converter plus numeric ranges, calendar dates, e-mail addresses, tuples,
        ordered objects with distinct extra keys, and strict-JSON strings."""

        def _format_literal(self, literal: str) -> str:
            return gb.gbnf_literal(literal)  # the library's leaves backslashes unescaped

        def _name(self, name: str) -> str:
            return name + "-" if name in RESERVED_NAMES else name or "root"

        def visit(self, schema: dict[str, Any], name: str) -> str:
            if "$defs" in schema or "definitions" in schema:  # resolve_refs has seen them
                schema = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
            t = schema.get("type")
            rule_name = self._name(name)
            if schema == {}:
                return self._add_rule(rule_name, self._add_primitive(
                    "value", _primitive("value")))
            if schema.get("enum") == []:
                return self._add_rule(rule_name, _NEVER)
            if "$ref" in schema or "anyOf" in schema or "enum" in schema:
                return super().visit(schema, name)
            bounds = any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                               "exclusiveMaximum"))
            if t == "integer" and bounds:
                lo, hi = _int_bounds(schema)
                return self._add_rule(rule_name, int_range_rule(lo, hi) + " space")
            if t == "number" and bounds:
                rule = number_range_rule(schema.get("minimum"), schema.get("maximum"),
                                         exclusive_minimum=schema.get("exclusiveMinimum"),
                                         exclusive_maximum=schema.get("exclusiveMaximum"))
                return self._add_rule(rule_name, rule + " space")
            if t == "number":
                return self._add_primitive("root" if rule_name == "root" else "number",
                                           _primitive("number"))
            if t == "string" and schema.get("format") in ("date", "time", "date-time", "email"):
                fmt = schema["format"]
                names = self._helpers(_EMAIL_RULES if fmt == "email" else _DATE_RULES)
                body = f"{names['date']} \"T\" {names['time']}" if fmt == "date-time" \
                    else names[fmt]
                return self._add_rule(rule_name, f'"\\"" {body} "\\"" space')
            if t == "string" and ("minLength" in schema or "maxLength" in schema) \
                    and "pattern" not in schema and "format" not in schema:
                char = self._add_primitive("char", _primitive("char"))
                reps = _repeat(char, schema.get("minLength", 0), schema.get("maxLength"))
                return self._add_rule(rule_name, f'"\\"" {reps} "\\"" space')
            if t == "array":
                return self._add_rule(rule_name, self._array(schema, name))
            if t == "object" and ("properties" in schema or "additionalProperties" in schema):
                return self._add_rule(rule_name, self._object(schema, name))
            if t == "object":
                return self._add_rule(rule_name, self._add_primitive(
                    "object", _primitive("object")))
            return super().visit(schema, name)

        def _helpers(self, rules: dict[str, str]) -> dict[str, str]:
            """Add helper rules (bodies refer to earlier ones as {name}); their given names."""
            names: dict[str, str] = {}
            for k, body in rules.items():
                for ref, rule in names.items():
                    body = body.replace("{" + ref + "}", rule)
                names[k] = self._add_rule(f"fmt-{k}", body)
            return names

        def _visit_pattern(self, pattern: str, name: str) -> str:
            # The library's translation mishandles escapes (\d{3} becomes "\d\d\d") and lets
            # raw quotes into the JSON string; gbnf.pattern_expr reads the regex with Python's own
            # parser and writes JSON text. The plan only keeps patterns it can translate.
            expr = gb.pattern_expr(pattern)
            if expr is None:
                raise SchemaError(f"pattern {pattern[:64]!r} cannot be enforced")
            return self._add_rule(name, f'"\\"" {gb.print_expr(expr, False)} "\\"" space')

        def _add_primitive(self, name: str, rule: Any) -> str:
            if name == "char":
                rule = type(rule)(_CHAR_RULE, [])
            elif name == "number":
                rule = type(rule)(_NUMBER_RULE, ["integral-part"])
            return super()._add_primitive(name, rule)

        def _array(self, schema: dict[str, Any], name: str) -> str:
            """Positions 0.. : prefixItems[i], then `items` (False: none), minItems..maxItems."""
            prefix = schema.get("prefixItems") or []
            items = schema.get("items", {})
            lo, hi = schema.get("minItems", 0), schema.get("maxItems")
            base = f"{name}{'-' if name else ''}"
            if items is False:
                hi = len(prefix) if hi is None else min(hi, len(prefix))
            item_rule = None if items is False else self.visit(items, f"{base}item")
            explicit = [self.visit(p, f"{base}tuple-{i}") for i, p in enumerate(prefix)]

            def from_pos(i: int) -> str:
                if hi is not None and i >= hi:
                    return ""
                sep = '"," space ' if i else ""
                if i < len(explicit) or i < lo:
                    item = explicit[i] if i < len(explicit) else item_rule
                    if item is None:
                        return _NEVER
                    rest = from_pos(i + 1)
                    seq = f"{sep}{item} {rest}".strip()
                    return seq if i < lo else f"({seq})?"
                if item_rule is None:
                    return ""
                left = None if hi is None else hi - i
                if left is None:
                    return f'({item_rule} ("," space {item_rule})*)?' if not i else \
                        f'("," space {item_rule})*'
                if not i:
                    return f'({item_rule} ("," space {item_rule}){{0,{left - 1}}})?'
                return f'("," space {item_rule}){{0,{left}}}'

            return f'"[" space {from_pos(0)} "]" space'

        def _object(self, schema: dict[str, Any], name: str) -> str:
            """Properties in declaration order, each present or (if optional) not; then extra
            properties (additionalProperties) whose keys are none of the declared ones."""
            base = f"{name}{'-' if name else ''}"
            props = list((schema.get("properties") or {}).items())
            required = set(schema.get("required", []))
            kvs = []
            for prop, sub in props:
                value = self.visit(sub, f"{base}{prop}")
                kvs.append(self._add_rule(
                    f"{base}{prop}-kv",
                    f"{self._format_literal(json.dumps(prop))} space \":\" space {value}"))
            extra = schema.get("additionalProperties")
            extra_kv = None
            if extra is not None and extra is not False:
                value = self.visit({} if extra is True else extra, f"{base}additional-value")
                key = self._add_rule(f"{base}additional-key",
                                     _key_excluding([p for p, _ in props]))
                extra_kv = self._add_rule(f"{base}additional-kv",
                                          f'{key} space ":" space {value}')
            n = len(props)
            # tail(i): properties i.. after one was written; head(i): before any was.
            tail = {n: f'("," space {extra_kv})*' if extra_kv else '""'}
            head = {n: f'({extra_kv} ("," space {extra_kv})*)?' if extra_kv else '""'}
            for i in range(n - 1, -1, -1):
                t_next = self._add_rule(f"{base}t{i + 1}", tail[i + 1])
                h_next = self._add_rule(f"{base}h{i + 1}", head[i + 1])
                if props[i][0] in required:
                    tail[i] = f'"," space {kvs[i]} {t_next}'
                    head[i] = f"{kvs[i]} {t_next}"
                else:
                    tail[i] = f'("," space {kvs[i]})? {t_next}'
                    head[i] = f"{kvs[i]} {t_next} | {h_next}"
            return f'"{{" space ({head[0]}) "}}" space'

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _repeat(item: str, lo: int, hi: int | None) -> str:
    """`item` lo..hi times as GBNF repetitions of at most _MAX_REPEAT each (the converter's
    nested optional groups for maxLength 500 are 500 levels deep)."""
    parts = []
    while lo > _MAX_REPEAT:
        parts.append(f"{item}{{{_MAX_REPEAT}}}")
        lo -= _MAX_REPEAT
        hi = None if hi is None else hi - _MAX_REPEAT
    if hi is None:
        parts.append(f"{item}{{{lo},}}" if lo else f"{item}*")
        return " ".join(parts)
    first = min(hi, _MAX_REPEAT)
    parts.append(f"{item}{{{lo},{first}}}")
    hi -= first
    while hi > 0:
        step = min(hi, _MAX_REPEAT)
        parts.append(f"{item}{{0,{step}}}")
        hi -= step
    return " ".join(parts)


def _primitive(name: str) -> Any:
    from llama_cpp.llama_grammar import PRIMITIVE_RULES

    return PRIMITIVE_RULES[name]


def _key_excluding(names: Sequence[str]) -> str:
    """GBNF for a JSON object key (quotes included, no escapes) equal to none of `names`: the
    complement of their trie."""
    raw = [(0, 0x1F), (ord('"'), ord('"')), (ord("\\"), ord("\\"))]
    names = [n for n in names if not any(lo <= ord(c) <= hi for c in n for lo, hi in raw)]
    any_char = gb.gbnf_class(gb.complement(raw))
    quote = gb.gbnf_literal('"')

    def node(prefix: str) -> str:
        nxt = sorted({n[len(prefix)] for n in names
                      if n.startswith(prefix) and len(n) > len(prefix)})
        alts = [] if prefix in names else [quote]
        others = gb.complement(raw + [(ord(c), ord(c)) for c in nxt])
        if others:
            alts.append(f"{gb.gbnf_class(others)} {any_char}* {quote}")
        alts += [f"{gb.gbnf_literal(c)} ({node(prefix + c)})" for c in nxt]
        return " | ".join(alts)

    return f"{quote} ({node('')})"


def _converter_gbnf(grammar_schema: dict[str, Any]) -> str:
    conv = _converter()
    try:
        resolved = conv.resolve_refs(copy.deepcopy(grammar_schema), "")
        conv.visit(resolved, "")
        return str(conv.format_grammar())
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as e:
        raise SchemaError(f"cannot be compiled to a grammar: {str(e)[:200]}") from None


# --- compiled grammars ------------------------------------------------------------------------
@dataclass(frozen=True)
class Grammar:
    """A compiled constraint: GBNF text and, when budgeted, what the budget allows."""

    text: str
    shortest: int | None = None
    """Tokens (at most) of the shortest accepted reply, its end included; None unbudgeted."""
    max_tokens: int | None = None
    """The longest reply it allows, in tokens, its end included (<= the request's max_tokens)."""


class _Compiled:
    """One schema's rules, and its automata and budgeters once budgets ask for them (per budget
    size class: a bounded repetition longer than any budget of the class is a loop there)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        gbnf = _converter_gbnf(plan_schema(schema).grammar)
        self.rules = gb.canonical_spaces(gb.parse_gbnf(gbnf))
        self.text = gb.print_gbnf(self.rules)
        self._automata: dict[int, gb.Automaton] = {}
        self._budgeters: dict[int, weakref.WeakKeyDictionary[Any, gb.Budgeter]] = {}
        self._plain: dict[int, gb.Budgeter] = {}
        self._lock = threading.Lock()

    def budgeter(self, tokenizer: gb.Tokenizer | None, budget: int) -> gb.Budgeter:
        size = 1 << max(6, (budget - 1).bit_length())  # 64, 128, 256, ... >= budget
        with self._lock:
            if size not in self._automata:
                self._automata[size] = gb.to_automaton(self.rules, loop_above=size)
            auto = self._automata[size]
            if tokenizer is None:
                if size not in self._plain:
                    self._plain[size] = gb.Budgeter(auto, gb.Costs())
                return self._plain[size]
            per = self._budgeters.setdefault(size, weakref.WeakKeyDictionary())
            b = per.get(tokenizer)
            if b is None:
                b = per[tokenizer] = gb.Budgeter(auto, _token_costs(tokenizer))
            return b


_CACHE: OrderedDict[str, _Compiled] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()
_TOKEN_COSTS: weakref.WeakKeyDictionary[Any, gb.TokenCosts] = weakref.WeakKeyDictionary()


def _token_costs(tokenizer: gb.Tokenizer) -> gb.TokenCosts:
    costs = _TOKEN_COSTS.get(tokenizer)
    if costs is None:  # a proxy: the cache must not keep the engine alive
        costs = _TOKEN_COSTS[tokenizer] = gb.TokenCosts(weakref.proxy(tokenizer))
    return costs


def _compiled(schema: dict[str, Any]) -> _Compiled:
    key = json.dumps(schema, sort_keys=True)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    compiled = _Compiled(schema)
    with _CACHE_LOCK:
        _CACHE[key] = compiled
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


def compile_schema(schema: dict[str, Any], *, max_tokens: int | None = None,
                   tokenizer: gb.Tokenizer | None = None, what: str = "reply") -> Grammar:
    """Compile a checked JSON schema into GBNF (SchemaError on what cannot compile). With
    `max_tokens`, only replies that fit in it — their end-of-turn token included — are accepted
    (BudgetError when not even the shortest fits). `tokenizer`: the serving engine's, when its
    grammar sampler takes token elements (llama.cpp), so literals cost their real tokens."""
    compiled = _compiled(schema)
    if max_tokens is None:
        if len(compiled.text) > MAX_GRAMMAR_BYTES:
            raise SchemaError(f"the grammar it compiles to is larger than {MAX_GRAMMAR_BYTES} "
                              "bytes")
        _parse_check(compiled.text)
        return Grammar(compiled.text)
    room = max_tokens - 1  # the end-of-turn token that closes the reply is counted too
    try:
        budgeter = compiled.budgeter(tokenizer, max(room, 1))
    except gb.GrammarError as e:  # too large to budget: generated without the guarantee
        log.warning("constraint not budgeted (%s): a reply may be cut by max_tokens", e)
        return compile_schema(schema, what=what)
    if budgeter.shortest > room:
        raise BudgetError(
            f"max_tokens {max_tokens} is too small for a complete {what}: the shortest valid one "
            f"takes up to {budgeter.shortest + 1} tokens, its end included. Raise max_tokens.",
            param="max_tokens")
    try:
        b = budgeter.grammar(room)
    except gb.GrammarError as e:
        log.warning("constraint not budgeted (%s): a reply may be cut by max_tokens", e)
        return compile_schema(schema, what=what)
    if not b.checked:
        _parse_check(b.grammar)
        b.checked = True
    return Grammar(b.grammar, budgeter.shortest + 1, b.budget + 1)


def shortest_tokens(schema: dict[str, Any], tokenizer: gb.Tokenizer | None = None) -> int:
    """Tokens (at most) of the shortest reply valid under `schema`, its end included."""
    return _compiled(schema).budgeter(tokenizer, 64).shortest + 1


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """Compile a checked JSON schema into GBNF, unbudgeted (raises SchemaError)."""
    return compile_schema(schema).text


def _parse_check(grammar: str) -> None:
    """Have llama.cpp's own grammar parser read the grammar (no model needed)."""
    try:
        from gemmakit.engines.llamacpp import _lib  # routes llama.cpp's log lines to logging
    except ImportError:  # pragma: no cover - the engine that would use it is not installed
        return
    try:
        llama_cpp = _lib()
    except ConfigError:  # pragma: no cover - llama-cpp-python is not installed
        return
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        raise SchemaError("llama.cpp's grammar parser refused the compiled grammar")
    llama_cpp.llama_sampler_free(sampler)


MAX_RAW_GRAMMAR_BYTES = 256 * 1024
"""Largest GBNF grammar a client may send (the `grammar` extension of /v1/completions)."""


def checked_grammar(grammar: str, capabilities: Capabilities, model_name: str, *,
                    ignore_eos: bool = False, param: str = "grammar") -> Constraint:
    """A client's own GBNF grammar as a constraint, checked before anything is queued: the engine
    must constrain generation, the grammar must be within MAX_RAW_GRAMMAR_BYTES and parse (with
    llama.cpp's grammar parser, root rule `root`); each failure is a 400 naming `param`."""
    if not capabilities.constraints:
        raise UnsupportedError(f"the engine serving '{model_name}' cannot constrain generation "
                               "with a grammar.", param=param)
    if ignore_eos:
        raise InvalidRequestError("ignore_eos cannot be used with a grammar (the grammar ends "
                                  "the reply).", param="ignore_eos")
    size = len(grammar.encode("utf-8"))
    if not grammar.strip():
        raise InvalidRequestError("the grammar is empty.", param=param)
    if size > MAX_RAW_GRAMMAR_BYTES:
        raise InvalidRequestError(f"the grammar is {size} bytes (the limit is "
                                  f"{MAX_RAW_GRAMMAR_BYTES}).", param=param)
    try:
        _parse_check(grammar)
    except SchemaError:
        raise InvalidRequestError("the grammar does not parse as GBNF with a 'root' rule (see "
                                  "llama.cpp's grammars/README.md).", param=param) from None
    return Constraint("grammar", grammar)


# --- the two kinds of constraint --------------------------------------------------------------
def _rebase_refs(node: Any, prefix: str) -> Any:
    """Rewrite local refs "#/x" of a sub-schema moved to "#/$defs/<name>" (prefix)."""
    if isinstance(node, list):
        return [_rebase_refs(v, prefix) for v in node]
    if isinstance(node, dict):
        out = {k: _rebase_refs(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = prefix + ref[1:].rstrip("/") if ref not in ("#", "#/") else prefix
        return out
    return node


def call_schema(tools: Sequence[ToolSpec], parallel: bool,
                max_calls: int = MAX_CALLS_PER_REPLY) -> dict[str, Any]:
    """The JSON schema of the reply to a forced call: one call object, or a list of 1 to
    `max_calls` of them."""
    defs: dict[str, Any] = {}
    alts = []
    for i, t in enumerate(tools):
        key = f"args{i}"
        defs[key] = _rebase_refs(t.parameters, f"#/$defs/{key}")
        alts.append({"type": "object",
                     "properties": {"name": {"const": t.name},
                                    "parameters": {"$ref": f"#/$defs/{key}"}},
                     "required": ["name", "parameters"]})
    one = alts[0] if len(alts) == 1 else {"anyOf": alts}
    root = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1,
                            "maxItems": max_calls}]} if parallel else one
    return {**root, "$defs": defs}


def tool_call_constraint(tools: Sequence[ToolSpec], parallel: bool, *,
                         max_tokens: int | None = None,
                         tokenizer: gb.Tokenizer | None = None) -> Constraint:
    """A grammar forcing a call to one of `tools` (each already checked by ToolSpec). With
    `max_tokens`, the reply always completes within it: a list of parallel calls only grows by a
    call that still fits, and at most as many calls as the budget can hold are allowed."""
    try:
        max_calls = MAX_CALLS_PER_REPLY
        if parallel and max_tokens is not None:
            try:
                one = shortest_tokens(call_schema(tools, False), tokenizer) - 1
                max_calls = max(1, min(MAX_CALLS_PER_REPLY, (max_tokens - 1) // max(one, 1)))
            except gb.GrammarError:
                pass  # too large to budget: compile_schema says so
        grammar = compile_schema(call_schema(tools, parallel, max_calls), max_tokens=max_tokens,
                                 tokenizer=tokenizer, what="tool call")
    except SchemaError:
        # Name the tool: compile each alone to find the one the grammar cannot hold.
        for i, t in enumerate(tools):
            try:
                schema_to_gbnf(t.parameters)
            except SchemaError as e:
                raise InvalidRequestError(f"tool '{t.name}': parameters schema {e}",
                                          param=f"tools[{i}].function.parameters",
                                          code="invalid_tool_schema") from None
        raise InvalidRequestError("the tools' schemas cannot be compiled to a grammar.",
                                  param="tools", code="invalid_tool_schema") from None
    return Constraint("grammar", grammar.text)


JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def response_format_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema a `response_format` asks for: None for text, {"type": "object"} for
    json_object, the given schema for json_schema (with `strict: true`, keywords the grammar
    cannot enforce are refused). Bad values are 400s on response_format."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError("response_format must be an object.", param="response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind != "json_schema":
        raise InvalidRequestError(f"response_format type '{kind}' is not supported (text, "
                                  "json_object, json_schema).", param="response_format.type")
    js = response_format.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("name", ""), str):
        raise InvalidRequestError("response_format.json_schema must be an object with a name "
                                  "and a schema.", param="response_format.json_schema")
    schema = js.get("schema")
    if schema is None:
        schema = {"type": "object"}
    label = js.get("name") or "response"
    try:
        check_schema(schema, strict=js.get("strict") is True)
    except SchemaError as e:
        where = f" at {e.path}" if e.path else ""
        raise InvalidRequestError(f"response_format schema '{label}' is invalid or "
                                  f"unsupported{where}: {e}",
                                  param="response_format.json_schema.schema",
                                  code="invalid_schema") from None
    return schema


def json_constraint(schema: dict[str, Any], label: str = "response", *,
                    max_tokens: int | None = None,
                    tokenizer: gb.Tokenizer | None = None) -> Constraint:
    try:
        return Constraint("grammar", compile_schema(schema, max_tokens=max_tokens,
                                                    tokenizer=tokenizer,
                                                    what="JSON answer").text)
    except SchemaError as e:
        raise InvalidRequestError(f"response_format schema '{label}' {e}",
                                  param="response_format.json_schema.schema",
                                  code="invalid_schema") from None
