"""Test helpers for grammars, independent of the code under test where it matters: a regex
translation of character grammars, a random walker over budgeted (right-linear) grammars that
measures each text's cost itself, and a toy tokenizer for token elements."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

from gemmakit.tools.gbnf import Alt, Cls, Expr, Lit, Ref, Rep, Seq, Tok, parse_gbnf


def to_regex(e: Expr, rules: dict[str, Expr] | None = None) -> str:
    """A Python regex for a character grammar expression (rule references inlined)."""
    if isinstance(e, Lit):
        return re.escape(e.text)
    if isinstance(e, Cls):
        parts = []
        for lo, hi in e.ranges:
            a, b = re.escape(chr(lo)), re.escape(chr(hi))
            parts.append(a if lo == hi else f"{a}-{b}")
        return "[" + "".join(parts) + "]"
    if isinstance(e, Ref):
        assert rules is not None
        return f"(?:{to_regex(rules[e.name], rules)})"
    if isinstance(e, Seq):
        return "".join(f"(?:{to_regex(x, rules)})" for x in e.items)
    if isinstance(e, Alt):
        return "|".join(f"(?:{to_regex(x, rules)})" for x in e.items)
    if isinstance(e, Rep):
        hi = "" if e.hi is None else str(e.hi)
        return f"(?:{to_regex(e.item, rules)}){{{e.lo},{hi}}}"
    raise TypeError(e)


def rule_regex(rule: str) -> re.Pattern:
    """Compile one GBNF expression (as written by int_range_rule, number_range_rule...)."""
    return re.compile(to_regex(parse_gbnf(f"root ::= {rule}\n")["root"]))


def grammar_regex(grammar: str, root: str = "root") -> re.Pattern:
    rules = parse_gbnf(grammar)
    return re.compile(to_regex(rules[root], rules), re.DOTALL)


class ToyTokenizer:
    """Splits text into pieces of at most three characters; ids are handed out as seen."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pieces: dict[int, str] = {}

    def tokenize(self, text: str) -> list[int]:
        out = []
        for i in range(0, len(text), 3):
            p = text[i:i + 3]
            if p not in self.ids:
                self.ids[p] = len(self.ids) + 1000
                self.pieces[self.ids[p]] = p
            out.append(self.ids[p])
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(self.pieces[t] for t in tokens)


@functools.lru_cache(maxsize=16)
def _rules(grammar: str) -> dict[str, Expr]:
    return parse_gbnf(grammar)


def _sample_char(e: Cls, rng: random.Random) -> str:
    lo, hi = rng.choice(e.ranges)
    if rng.random() < 0.7 and lo < 0x7F:  # mostly ASCII, where the class has some
        hi = min(hi, 0x7E)
    while True:
        cp = rng.randint(lo, hi)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def walk(grammar: str, rng: random.Random, pieces: dict[int, str] | None = None, *,
         longest: bool = False, stop: float = 0.2) -> tuple[str, int]:
    """A random text of a budgeted (right-linear) grammar and its cost: bytes for characters,
    one per token element. `longest`: never end while the grammar allows going on (the reply
    that runs until the budget closes it)."""
    rules = _rules(grammar)
    expr = rules["root"]
    out: list[str] = []
    cost = 0
    for _ in range(100_000):
        alts = list(expr.items) if isinstance(expr, Alt) else [expr]
        going_on = [a for a in alts if a != Lit("")]
        if going_on and (longest or len(going_on) == len(alts) or rng.random() > stop):
            alt = rng.choice(going_on)
        else:
            break
        nxt = None
        for item in alt.items if isinstance(alt, Seq) else (alt,):
            if isinstance(item, Lit):
                out.append(item.text)
                cost += len(item.text.encode())
            elif isinstance(item, Cls):
                c = _sample_char(item, rng)
                out.append(c)
                cost += len(c.encode())
            elif isinstance(item, Tok):
                assert pieces is not None, "token elements need the tokenizer's pieces"
                out.append(pieces[item.id])
                cost += 1
            elif isinstance(item, Ref) and isinstance(rules[item.name], Cls):  # a named class
                c = _sample_char(rules[item.name], rng)  # type: ignore[arg-type]
                out.append(c)
                cost += len(c.encode())
            elif isinstance(item, Ref):
                nxt = rules[item.name]
            else:
                raise AssertionError(f"not right-linear: {item}")
        if nxt is None:
            break
        expr = nxt
    else:
        raise AssertionError("the walk did not end")
    return "".join(out), cost


def accepts(grammar: str, text: str) -> bool:
    """Whether a right-linear character grammar (a budgeted one, no token elements) accepts
    `text` exactly."""
    rules = _rules(grammar)
    memo: dict[tuple[str, int], bool] = {}

    def match(name: str, pos: int) -> bool:
        key = (name, pos)
        if key not in memo:
            memo[key] = False  # right-linear: no rule is re-entered at the same position
            expr = rules[name]
            memo[key] = any(seq(a, pos) for a in (expr.items if isinstance(expr, Alt)
                                                    else (expr,)))
        return memo[key]

    def seq(alt: Expr, pos: int) -> bool:
        for item in alt.items if isinstance(alt, Seq) else (alt,):
            if isinstance(item, Ref) and isinstance(rules[item.name], Cls):  # a named class
                item = rules[item.name]
            if isinstance(item, Lit):
                if not text.startswith(item.text, pos):
                    return False
                pos += len(item.text)
            elif isinstance(item, Cls):
                if pos >= len(text) or not any(lo <= ord(text[pos]) <= hi
                                               for lo, hi in item.ranges):
                    return False
                pos += 1
            elif isinstance(item, Ref):
                return match(item.name, pos)
            else:
                raise AssertionError(item)
        return pos == len(text)

    return match("root", 0)
