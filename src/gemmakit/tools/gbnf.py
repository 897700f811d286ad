"""GBNF for llama.cpp: reading and printing it, JSON-Schema regex patterns written as GBNF, and the
length budget — the grammar a constrained reply is generated under, rewritten so that every text it
accepts fits in the reply's token budget, with the shortest accepted text known before the request
is queued.

Why this is sound. llama.cpp's grammar sampler never accepts a token with empty text, so a token
consumed by character rules covers at least one byte; a token element (``<[id]>``) covers exactly
one token. The *cost* of a text is therefore an upper bound on the tokens it can take: its bytes
under character rules plus one per token element. The budgeted grammar accepts exactly the texts
of the original grammar whose cost is at most the budget, so a reply generated under it is
complete after at most `budget` tokens — whatever the model samples — and every state the sampler
can reach still has a completion that fits. Nothing is cut by `max_tokens` any more.

How. The GBNF (written by the JSON-schema converter) is parsed (`parse_gbnf`), turned into a finite
automaton (rule references inlined; recursion unrolled to `MAX_NESTING` levels, which only removes
texts), and the automaton is multiplied by the budget: a rule per (state, remaining budget) pair,
right-linear, so llama.cpp's parser follows few paths through it at a time. States whose every
continuation is short (the closing brackets of a call) keep one unbudgeted rule. Literal runs
become token elements when a tokenizer is given (`TokenCosts`): `{"name": "get_weather",
"parameters": {` costs its 12 tokens instead of its 40 bytes, which makes small budgets usable.

The rule count grows with states x budget; `Budgeter.grammar` lowers the budget (never raises it)
to stay under `MAX_PAIRS` rules, so a reply can end shorter than max_tokens would allow, never longer.
"""

from __future__ import annotations

import heapq
import re
import re._constants as sre
import re._parser as sre_parse
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_NESTING = 3
"""Levels a recursive rule (a recursive $ref, JSON values of any shape) is unrolled to."""
MAX_STATES = 20_000
"""Largest automaton a budgeted grammar is built from (after minimisation)."""
MAX_PAIRS = 30_000
"""Most (state, budget) rules in one budgeted grammar (about 2 MB of GBNF)."""

# --- GBNF expressions ---------------------------------------------------------------------------
Range = tuple[int, int]  # inclusive code point range


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Cls:
    ranges: tuple[Range, ...]  # positive, sorted, merged


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class Tok:
    """A token element, ``<[id]>``: exactly one token of the engine's vocabulary."""

    id: int


@dataclass(frozen=True)
class Seq:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Rep:
    item: Expr
    lo: int
    hi: int | None


Expr = Lit | Cls | Ref | Tok | Seq | Alt | Rep
MAX_CODE_POINT = 0x10FFFF


class GrammarError(ValueError):
    """A grammar this module cannot read or budget."""


def _merge(ranges: Iterable[Range]) -> tuple[Range, ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def complement(ranges: Sequence[Range]) -> tuple[Range, ...]:
    out, nxt = [], 0
    for lo, hi in _merge(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


def intersect(a: Sequence[Range], b: Sequence[Range]) -> tuple[Range, ...]:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return _merge(out)


class _Reader:
    """A recursive-descent reader of GBNF as llama.cpp parses it (the subset without tokens)."""

    _NAME = re.compile(r"[A-Za-z0-9-]+")

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def space(self, newline: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == "#":
                while self.i < len(s) and s[self.i] not in "\r\n":
                    self.i += 1
            elif c in " \t" or (newline and c in "\r\n"):
                self.i += 1
            else:
                return

    def char(self) -> int:
        s, i = self.s, self.i
        if s[i] != "\\":
            self.i += 1
            return ord(s[i])
        esc = s[i + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(esc)
        if width:
            self.i += 2 + width
            return int(s[i + 2:i + 2 + width], 16)
        self.i += 2
        simple = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]",
                  "-": "-"}
        if esc not in simple:
            raise GrammarError(f"unknown escape \\{esc}")
        return ord(simple[esc])

    def rules(self) -> dict[str, Expr]:
        out: dict[str, Expr] = {}
        self.space(True)
        while self.i < len(self.s):
            m = self._NAME.match(self.s, self.i)
            if not m:
                raise GrammarError(f"expected a rule name at {self.s[self.i:self.i + 20]!r}")
            self.i = m.end()
            self.space(False)
            if not self.s.startswith("::=", self.i):
                raise GrammarError("expected ::=")
            self.i += 3
            self.space(True)
            out[m.group()] = self.alternates()
            self.space(True)
        return out

    def alternates(self) -> Expr:
        alts = [self.sequence()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            self.space(True)
            alts.append(self.sequence())
        return alts[0] if len(alts) == 1 else Alt(tuple(alts))

    def sequence(self) -> Expr:
        items: list[Expr] = []
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == '"':
                self.i += 1
                chars = []
                while s[self.i] != '"':
                    chars.append(chr(self.char()))
                self.i += 1
                items.append(Lit("".join(chars)))
            elif c == "[":
                self.i += 1
                neg = s[self.i] == "^"
                if neg:
                    self.i += 1
                ranges = []
                while s[self.i] != "]":
                    lo = self.char()
                    hi = lo
                    if s[self.i] == "-" and s[self.i + 1] != "]":
                        self.i += 1
                        hi = self.char()
                    ranges.append((lo, hi))
                self.i += 1
                items.append(Cls(complement(ranges) if neg else _merge(ranges)))
            elif c == ".":
                self.i += 1
                items.append(Cls(complement([(10, 10), (13, 13)])))
            elif s.startswith("<[", self.i):
                end = s.index("]>", self.i)
                items.append(Tok(int(s[self.i + 2:end])))
                self.i = end + 2
            elif c == "(":
                self.i += 1
                self.space(True)
                items.append(self.alternates())
                if s[self.i] != ")":
                    raise GrammarError("expected )")
                self.i += 1
            elif c in "*+?{":
                if not items:
                    raise GrammarError("a repetition needs an item")
                items[-1] = self.repetition(items[-1])
            elif self._NAME.match(s, self.i):
                m = self._NAME.match(s, self.i)
                assert m is not None
                # A name followed by ::= starts the next rule.
                j = m.end()
                while j < len(s) and s[j] in " \t":
                    j += 1
                if s.startswith("::=", j):
                    break
                self.i = m.end()
                items.append(Ref(m.group()))
            else:
                break
            self.space(False)
            if self.i < len(s) and s[self.i] in "\r\n":
                # A newline ends the sequence unless the next line goes on with | or ).
                k = self.i
                self.space(True)
                if self.i < len(s) and s[self.i] in "|)":
                    continue
                self.i = k
                self.space(True)
                break
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def repetition(self, item: Expr) -> Expr:
        c = self.s[self.i]
        self.i += 1
        if c == "*":
            return Rep(item, 0, None)
        if c == "+":
            return Rep(item, 1, None)
        if c == "?":
            return Rep(item, 0, 1)
        m = re.compile(r"\s*(\d+)\s*(,\s*(\d*))?\s*}").match(self.s, self.i)
        if not m:
            raise GrammarError("bad {m,n}")
        self.i = m.end()
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        return Rep(item, lo, hi)


def parse_gbnf(text: str) -> dict[str, Expr]:
    """GBNF rules by name."""
    try:
        return _Reader(text).rules()
    except IndexError:
        raise GrammarError("unexpected end of grammar") from None


# --- printing -----------------------------------------------------------------------------------
def _esc(cp: int, in_class: bool) -> str:
    c = chr(cp)
    if c.isascii() and (c.isalnum() or c in " _.,:;!?'#$%&*+/=<>@`~{}|()"):
        return c
    if c in '"\\' or (in_class and c in "[]-"):
        return "\\" + c
    if c in "[]^-":  # literal brackets, or a caret anywhere in a class
        return c if not in_class else f"\\x{cp:02X}"
    if cp < 0x100:
        return f"\\x{cp:02X}"
    if cp < 0x10000:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def gbnf_literal(text: str) -> str:
    return '"' + "".join(_esc(ord(c), False) for c in text) + '"'


def gbnf_class(ranges: Sequence[Range]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(_esc(lo, True) if lo == hi else f"{_esc(lo, True)}-{_esc(hi, True)}")
    return "[" + "".join(parts) + "]"


def print_expr(e: Expr, top: bool = True) -> str:
    if isinstance(e, Lit):
        return gbnf_literal(e.text)
    if isinstance(e, Cls):
        return gbnf_class(e.ranges)
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Tok):
        return f"<[{e.id}]>"
    if isinstance(e, Seq):
        s = " ".join(print_expr(x, False) for x in e.items)
        return s if top else f"({s})"
    if isinstance(e, Alt):
        s = " | ".join(print_expr(x, True) for x in e.items)
        return s if top else f"({s})"
    inner = print_expr(e.item, False)
    if e.lo == 0 and e.hi is None:
        return inner + "*"
    if e.lo == 1 and e.hi is None:
        return inner + "+"
    if e.lo == 0 and e.hi == 1:
        return inner + "?"
    hi = "" if e.hi is None else str(e.hi)
    return inner + (f"{{{e.lo}}}" if e.hi == e.lo else f"{{{e.lo},{hi}}}")


def print_gbnf(rules: dict[str, Expr]) -> str:
    return "".join(f"{name} ::= {print_expr(e)}\n" for name, e in rules.items())


# --- regex patterns -----------------------------------------------------------------------------
_ASCII = ((0x20, 0x7E),)
_CATEGORIES = {  # ECMA-262's classes, which are inside Python's (jsonschema checks with `re`)
    "CATEGORY_DIGIT": ((0x30, 0x39),),
    "CATEGORY_WORD": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
    "CATEGORY_SPACE": ((0x09, 0x0D), (0x20, 0x20)),
}
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b",
                 "\f": "\\f"}
_UNSAFE = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))  # written escaped inside a JSON string


class _Unsupported(Exception):
    pass


def pattern_expr(pattern: str) -> Expr | None:
    """The JSON text (inside the quotes) of the strings `re.search(pattern, s)` accepts, as a GBNF
    expression — exactly, or None when the pattern uses what a grammar cannot follow (lookaround,
    backreferences, word boundaries, inline flags, anchors other than a leading ^ / trailing $).
    Unanchored ends match anything there, as a JSON-Schema pattern does."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:  # an invalid pattern is refused by check_schema
        return None
    if parsed.state.flags & ~sre.SRE_FLAG_UNICODE:
        return None
    items = list(parsed)
    start = bool(items) and items[0] == (sre.AT, sre.AT_BEGINNING)
    end = bool(items) and items[-1] == (sre.AT, sre.AT_END)
    items = items[int(start):len(items) - int(end)]
    try:
        body = _re_seq(items)
    except _Unsupported:
        return None
    anything = Rep(_json_chars(complement([])), 0, None)
    return Seq(tuple(x for x in ((None if start else anything), body,
                                 (None if end else anything)) if x is not None))


def _json_chars(ranges: Sequence[Range]) -> Expr:
    """One character from `ranges`, as JSON string text (escaped where JSON needs it; control
    characters without a short escape are left out)."""
    alts: list[Expr] = []
    safe = intersect(ranges, complement(_UNSAFE))
    if safe:
        alts.append(Cls(safe))
    for ch, esc in _JSON_ESCAPES.items():
        if intersect(ranges, [(ord(ch), ord(ch))]):
            alts.append(Lit(esc))
    if not alts:
        return Cls(())
    return alts[0] if len(alts) == 1 else Alt(tuple(alts))


def _json_text(cp: int) -> Expr:
    ch = chr(cp)
    if ch in _JSON_ESCAPES:
        return Lit(_JSON_ESCAPES[ch])
    return Lit(ch) if cp > 0x1F else Lit(f"\\u{cp:04x}")


def _re_seq(items: Sequence[tuple]) -> Expr:
    return Seq(tuple(_re_item(op, av) for op, av in items))


def _re_item(op: object, av: Any) -> Expr:
    if op is sre.LITERAL:
        return _json_text(av)
    if op is sre.NOT_LITERAL:
        return _json_chars(complement([(av, av)]))
    if op is sre.ANY:
        return _json_chars(complement([(0x0A, 0x0A)]))
    if op is sre.IN:
        return _json_chars(_re_class(av))
    if op is sre.BRANCH:
        return Alt(tuple(_re_seq(list(b)) for b in av[1]))
    if op is sre.SUBPATTERN:
        _, add, remove, sub = av
        if add or remove:
            raise _Unsupported
        return _re_seq(list(sub))
    if op is sre.MAX_REPEAT or op is sre.MIN_REPEAT:  # the same language when fully matched
        lo, hi, sub = av
        return Rep(_re_seq(list(sub)), lo, None if hi == sre.MAXREPEAT else hi)
    raise _Unsupported


def _re_class(items: Sequence[tuple]) -> tuple[Range, ...]:
    ranges: list[Range] = []
    negate = categories = False
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            ranges.append((av, av))
        elif op is sre.RANGE:
            ranges.append(av)
        elif op is sre.CATEGORY and str(av) in _CATEGORIES:
            categories = True
            ranges += _CATEGORIES[str(av)]
        elif op is sre.CATEGORY and str(av).replace("_NOT", "") in _CATEGORIES:
            # Python's \D, \W and \S leave out non-ASCII digits, letters and spaces too: only
            # the ASCII part of the complement is certain.
            categories = True
            ranges += intersect(complement(_CATEGORIES[str(av).replace("_NOT", "")]), _ASCII)
        else:
            raise _Unsupported
    if not negate:
        return _merge(ranges)
    # The categories are approximated from inside: their complement is only certain in ASCII.
    return intersect(complement(ranges), _ASCII) if categories else complement(ranges)


# --- JSON whitespace ----------------------------------------------------------------------------
def canonical_spaces(rules: dict[str, Expr], space: str = "space") -> dict[str, Expr]:
    """Replace the converter's optional-whitespace rule with JSON's canonical spacing (the one
    `json.dumps` writes and the prompt shows): one space after ':' and ',', none elsewhere. Fewer
    choices for the model, longer literal runs, and no whitespace runaway."""
    def fix(e: Expr) -> Expr:
        if isinstance(e, Seq):
            items: list[Expr] = []
            for x in e.items:
                if x == Ref(space):
                    if items and isinstance(items[-1], Lit) and items[-1].text[-1:] in (",", ":"):
                        items[-1] = Lit(items[-1].text + " ")
                    continue
                x = fix(x)
                if isinstance(x, Lit) and items and isinstance(items[-1], Lit):
                    items[-1] = Lit(items[-1].text + x.text)
                elif x != Lit(""):
                    items.append(x)
            return items[0] if len(items) == 1 else Seq(tuple(items)) if items else Lit("")
        if isinstance(e, Alt):
            return Alt(tuple(fix(x) for x in e.items))
        if isinstance(e, Rep):
            return Rep(fix(e.item), e.lo, e.hi)
        if e == Ref(space):
            return Lit("")
        return e

    return {name: fix(e) for name, e in rules.items() if name != space}


# --- costs --------------------------------------------------------------------------------------
# UTF-8 length bands of code points: a character of band k costs k bytes.
_BANDS: tuple[tuple[int, tuple[Range, ...]], ...] = (
    (1, ((0, 0x7F),)), (2, ((0x80, 0x7FF),)), (3, ((0x800, 0xD7FF), (0xE000, 0xFFFF))),
    (4, ((0x10000, MAX_CODE_POINT),)))


def char_bands(ranges: Sequence[Range]) -> list[tuple[int, tuple[Range, ...]]]:
    """A character class split by UTF-8 length: (bytes, ranges) per non-empty band."""
    return [(cost, part) for cost, band in _BANDS if (part := intersect(ranges, band))]


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...


class Costs:
    """How literals are written: as characters (worst case one token per byte) by default."""

    def tokens(self, text: str) -> list[int] | None:
        return None


class TokenCosts(Costs):
    """Literal runs as token elements (``<[id]> ...``): each element is exactly one token, so a
    literal costs its token count. Only where the tokenization spells the literal piece by piece;
    escapes inside strings stay characters."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int] | None] = {}

    def tokens(self, text: str) -> list[int] | None:
        if text.startswith("\\"):
            return None
        if text not in self._cache:
            ids = self.tokenizer.tokenize(text)
            ok = bool(ids) and "".join(self.tokenizer.detokenize([t]) for t in ids) == text
            self._cache[text] = ids if ok else None
        return self._cache[text]


# --- automaton ----------------------------------------------------------------------------------
Label = Lit | Cls


@dataclass
class Automaton:
    """An epsilon-free finite automaton over literal runs and character classes."""

    edges: list[list[tuple[Label, int]]]
    start: int
    final: set[int]

    @property
    def size(self) -> int:
        return len(self.edges)


class _Thompson:
    def __init__(self, rules: dict[str, Expr], max_states: int, loop_above: int | None) -> None:
        self.rules = rules
        self.max_states = max_states
        self.loop_above = loop_above
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[Label, int]]] = []
        self.depth: dict[str, int] = defaultdict(int)

    def new(self) -> int:
        if len(self.edges) >= self.max_states * 4:
            raise GrammarError("the grammar is too large to budget")
        self.eps.append([])
        self.edges.append([])
        return len(self.edges) - 1

    def build(self, e: Expr, src: int) -> int | None:
        """Add `e` starting at `src`; the state after it, or None if it matches nothing."""
        if isinstance(e, Lit):
            if not e.text:
                return src
            dst = self.new()
            self.edges[src].append((e, dst))
            return dst
        if isinstance(e, Cls):
            if not e.ranges:
                return None
            dst = self.new()
            self.edges[src].append((e, dst))
            return dst
        if isinstance(e, Tok):
            raise GrammarError("token elements cannot be budgeted again")
        if isinstance(e, Ref):
            if e.name not in self.rules:
                raise GrammarError(f"undefined rule {e.name}")
            if self.depth[e.name] >= MAX_NESTING:
                return None  # recursion unrolled this deep: the deeper texts are left out
            self.depth[e.name] += 1
            try:
                return self.build(self.rules[e.name], src)
            finally:
                self.depth[e.name] -= 1
        if isinstance(e, Seq):
            return self.seq(e.items, src)
        if isinstance(e, Alt):
            exits = [x for x in (self.build(a, src) for a in e.items) if x is not None]
            if not exits:
                return None
            if len(exits) == 1:
                return exits[0]
            join = self.new()
            for x in exits:
                self.eps[x].append(join)
            return join
        return self.rep(e, src)

    def seq(self, items: Sequence[Expr], src: int) -> int | None:
        cur: int | None = src
        i = 0
        while i < len(items) and cur is not None:
            shared = self._shared_loop(items, i)
            if shared:
                n, sep = shared
                # `X (sep X)*`: one copy of X, looped through sep (JSON lists and objects).
                entry = self.new()
                self.eps[cur].append(entry)
                out = self.seq(items[i:i + n], entry)
                if out is None:
                    return None
                back = self.seq(sep, out)
                if back is not None:
                    self.eps[back].append(entry)
                cur = out
                i += n + 1
                continue
            cur = self.build(items[i], cur)
            i += 1
        return cur

    @staticmethod
    def _shared_loop(items: Sequence[Expr], i: int) -> tuple[int, tuple[Expr, ...]] | None:
        """(n, sep) when items[i:i+n] is X and items[i+n] is (sep X)*."""
        for n in range(1, min(4, len(items) - i)):
            rep = items[i + n]
            if isinstance(rep, Rep) and rep.lo == 0 and rep.hi is None \
                    and isinstance(rep.item, Seq):
                inner = rep.item.items
                if len(inner) > n and tuple(inner[-n:]) == tuple(items[i:i + n]):
                    return n, tuple(inner[:-n])
        return None

    def rep(self, e: Rep, src: int) -> int | None:
        if e.hi is not None and self.loop_above is not None and e.hi > self.loop_above:
            # More repetitions than any budget this automaton serves can pay for (each costs at
            # least one token): the bound cannot be reached, a loop is the same language.
            e = Rep(e.item, e.lo, None)
        cur: int | None = src
        for _ in range(e.lo):
            if cur is None:
                return None
            cur = self.build(e.item, cur)
        if cur is None:
            return None
        if e.hi is None:
            loop = self.new()
            self.eps[cur].append(loop)
            out = self.build(e.item, loop)
            if out is not None:
                self.eps[out].append(loop)
            return loop
        # Up to hi - lo more: each step goes on or leaves for the end directly (leaving through
        # every later step instead would give each state an edge into every later one).
        end = self.new()
        for _ in range(e.hi - e.lo):
            self.eps[cur].append(end)
            out = self.build(e.item, cur)
            if out is None:
                break
            cur = out
        self.eps[cur].append(end)
        return end


def to_automaton(rules: dict[str, Expr], root: str = "root", max_states: int = MAX_STATES,
                 loop_above: int | None = None) -> Automaton:
    """The grammar's language (recursion unrolled to MAX_NESTING) as a small automaton.
    `loop_above`: the largest budget it will serve; bounded repetitions above it become loops."""
    t = _Thompson(rules, max_states, loop_above)
    start = t.new()
    end = t.build(Ref(root), start)
    if end is None:
        raise GrammarError("the grammar accepts no text")
    n = len(t.edges)
    # Epsilon closures, then epsilon-free edges.
    closure: list[set[int]] = []
    for s in range(n):
        seen, todo = {s}, [s]
        while todo:
            for d in t.eps[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        closure.append(seen)
    edges = [[lab_dst for c in closure[s] for lab_dst in t.edges[c]] for s in range(n)]
    final = {s for s in range(n) if end in closure[s]}
    auto = Automaton(edges, start, final)
    auto = _trim(auto)
    auto = _minimise(auto)
    auto = _merge_literals(auto)
    auto = _minimise(_trim(auto))
    if auto.size > max_states:
        raise GrammarError(f"the grammar needs {auto.size} states to budget (limit {max_states})")
    return auto


def _trim(a: Automaton) -> Automaton:
    """Keep states reachable from the start that can reach a final state; renumber."""
    fwd, todo = {a.start}, [a.start]
    while todo:
        for _, d in a.edges[todo.pop()]:
            if d not in fwd:
                fwd.add(d)
                todo.append(d)
    rev: dict[int, list[int]] = defaultdict(list)
    for s in fwd:
        for _, d in a.edges[s]:
            rev[d].append(s)
    live = {s for s in a.final if s in fwd}
    todo = list(live)
    while todo:
        for p in rev[todo.pop()]:
            if p not in live:
                live.add(p)
                todo.append(p)
    if a.start not in live:
        raise GrammarError("the grammar accepts no text")
    order = sorted(live)
    index = {s: i for i, s in enumerate(order)}
    edges = []
    for s in order:
        seen: set[tuple[Label, int]] = set()
        out = []
        for lab, d in a.edges[s]:
            if d in live and (lab, index[d]) not in seen:
                seen.add((lab, index[d]))
                out.append((lab, index[d]))
        edges.append(out)
    return Automaton(edges, index[a.start], {index[s] for s in a.final if s in live})


def _minimise(a: Automaton) -> Automaton:
    """Merge states with the same future (bisimulation classes): copies of a rule that were
    inlined in several places and end the same way become one."""
    cls = [int(s in a.final) for s in range(a.size)]
    while True:
        sigs: dict[tuple, int] = {}
        new = []
        for s in range(a.size):
            sig = (cls[s], frozenset((lab, cls[d]) for lab, d in a.edges[s]))
            new.append(sigs.setdefault(sig, len(sigs)))
        if len(sigs) == len(set(cls)):
            break
        cls = new
    n = max(cls) + 1
    edges: list[list[tuple[Label, int]]] = [[] for _ in range(n)]
    done = set()
    for s in range(a.size):
        c = cls[s]
        if c in done:
            continue
        done.add(c)
        edges[c] = list(dict.fromkeys((lab, cls[d]) for lab, d in a.edges[s]))
    return Automaton(edges, cls[a.start], {cls[s] for s in a.final})


def _merge_literals(a: Automaton) -> Automaton:
    """Join literal runs: a state entered by one literal edge and left only by literals
    disappears into its predecessor's edge, so `", "unit": "` is one run (one tokenization)."""
    edges = [list(e) for e in a.edges]
    preds: dict[int, list[int]] = defaultdict(list)  # one entry per incoming edge
    for s, out in enumerate(edges):
        for _, d in out:
            preds[d].append(s)
    changed = True
    while changed:
        changed = False
        for s in range(len(edges)):
            if s == a.start or s in a.final or not edges[s] or len(preds[s]) != 1:
                continue
            p = preds[s][0]
            if p == s or not all(isinstance(lab, Lit) for lab, _ in edges[s]):
                continue
            k = next(i for i, (_, d) in enumerate(edges[p]) if d == s)
            head = edges[p][k][0]
            if not isinstance(head, Lit):
                continue
            merged: list[tuple[Label, int]] = [
                (Lit(head.text + lab.text), d) for lab, d in edges[s] if isinstance(lab, Lit)]
            edges[p] = edges[p][:k] + merged + edges[p][k + 1:]
            for _, d in edges[s]:
                preds[d].remove(s)
                preds[d].append(p)
            edges[s] = []
            preds[s] = []
            changed = True
    return Automaton(edges, a.start, set(a.final))


# --- costs over the automaton -------------------------------------------------------------------
EdgeCosts = list[list[list[tuple[int, str, int]]]]
"""Per state, per edge: its (cost, GBNF, destination) variants."""


def _edge_costs(a: Automaton, costs: Costs, classes: dict[str, str]) -> EdgeCosts:
    """Costs of every edge; character classes are named once in `classes` (text -> rule name),
    which halves the grammar. A literal becomes token elements only where no character-level edge
    entering its state could match one of its characters: llama.cpp's sampler would otherwise let
    a token start under the character rule and end inside the token element, which its accept
    step then refuses (an engine error)."""
    tokens: dict[tuple[int, int], list[int] | None] = {}
    for s, out in enumerate(a.edges):
        for k, (lab, _) in enumerate(out):
            if isinstance(lab, Lit):
                tokens[(s, k)] = costs.tokens(lab.text)
    while True:  # a literal left as characters can make the next one unsafe: to a fixed point
        chars_into: dict[int, list[tuple[Range, ...]]] = defaultdict(list)
        for s, out in enumerate(a.edges):
            for k, (lab, d) in enumerate(out):
                if isinstance(lab, Cls):
                    chars_into[d].append(lab.ranges)
                elif tokens.get((s, k)) is None:
                    chars_into[d].append(_merge((ord(c), ord(c)) for c in lab.text))
        changed = False
        for s, out in enumerate(a.edges):
            for k, (lab, _) in enumerate(out):
                if isinstance(lab, Lit) and tokens.get((s, k)) is not None:
                    cps = [(ord(c), ord(c)) for c in lab.text]
                    if any(intersect(r, cps) for r in chars_into[s]):
                        tokens[(s, k)] = None
                        changed = True
        if not changed:
            break
    result: EdgeCosts = []
    for s, out in enumerate(a.edges):
        row = []
        for k, (lab, d) in enumerate(out):
            if isinstance(lab, Lit):
                ids = tokens[(s, k)]
                if ids is not None:
                    row.append([(len(ids), " ".join(f"<[{t}]>" for t in ids), d)])
                else:
                    row.append([(len(lab.text.encode("utf-8")), gbnf_literal(lab.text), d)])
            else:
                variants = []
                for c, part in char_bands(lab.ranges):
                    text = gbnf_class(part)
                    if len(text) > 8:
                        text = classes.setdefault(text, f"k{len(classes)}")
                    variants.append((c, text, d))
                row.append(variants)
        result.append(row)
    return result


def _min_costs(a: Automaton, ec: EdgeCosts) -> list[float]:
    """Cheapest completion from each state (Dijkstra from the final states)."""
    rev: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for s, row in enumerate(ec):
        for variants in row:
            for c, _, d in variants:
                rev[d].append((s, c))
    dist = [float("inf")] * a.size
    heap = [(0.0, s) for s in a.final]
    for s in a.final:
        dist[s] = 0.0
    while heap:
        d0, s = heapq.heappop(heap)
        if d0 > dist[s]:
            continue
        for p, c in rev[s]:
            if d0 + c < dist[p]:
                dist[p] = d0 + c
                heapq.heappush(heap, (d0 + c, p))
    return dist


def _max_costs(a: Automaton, ec: EdgeCosts) -> list[float]:
    """Most expensive completion from each state; infinite where a loop is reachable."""
    inf = float("inf")
    succ = [[(c, d) for variants in row for c, _, d in variants] for row in ec]
    # States on a cycle, or that reach one, are unbounded: Tarjan's SCCs, then a DAG pass.
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    comp = [-1] * a.size
    on: set[int] = set()
    stack: list[int] = []
    order: list[list[int]] = []
    counter = 0
    for root in range(a.size):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i][1]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            for _, w in succ[v]:
                if w in on:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                members = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp[w] = len(order)
                    members.append(w)
                    if w == v:
                        break
                order.append(members)
    best = [0.0] * a.size
    for members in order:  # Tarjan yields components in reverse topological order
        cyclic = len(members) > 1 or any(d == members[0] for _, d in succ[members[0]])
        for v in members:
            if cyclic:
                best[v] = inf
                continue
            m = 0.0
            for c, d in succ[v]:
                m = max(m, c + best[d])
            best[v] = m
    return best


# --- the budgeted grammar -----------------------------------------------------------------------
@dataclass
class Budgeted:
    grammar: str
    shortest: int
    """Cost of the cheapest accepted text (an upper bound on its tokens)."""
    budget: int
    """The budget the grammar enforces (<= the one asked for)."""
    rules: int
    checked: bool = False
    """Whether llama.cpp's parser has read it (once is enough)."""


class Budgeter:
    """Budgets one automaton under one cost model; `shortest` is known before any budget."""

    def __init__(self, automaton: Automaton, costs: Costs) -> None:
        self.a = automaton
        self.classes: dict[str, str] = {}
        self.ec = _edge_costs(automaton, costs, self.classes)
        self.minc = _min_costs(automaton, self.ec)
        self.maxc = _max_costs(automaton, self.ec)
        self.dist = _min_costs_from(automaton, self.ec)
        self._made: dict[int, Budgeted] = {}

    @property
    def shortest(self) -> int:
        return int(self.minc[self.a.start])

    def _walk(self, budget: int, emit: Callable[[str, str], None] | None) -> int:
        """Visit the rules reachable from (start, budget): one per (state, remaining budget), and
        one unbudgeted rule per state whose every continuation fits in what remains. Returns how
        many; calls emit(name, body) for each when given."""
        a, minc, maxc, ec = self.a, self.minc, self.maxc, self.ec

        def key(s: int, b: float) -> tuple[int, int]:
            return (s, -1) if b >= maxc[s] else (s, int(b))

        def name(k: tuple[int, int]) -> str:
            return f"u{k[0]}" if k[1] < 0 else f"s{k[0]}b{k[1]}"

        seen: set[tuple[int, int]] = set()
        todo = [key(a.start, budget)]
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            s, b = k
            alts = []
            for variants in ec[s]:
                for c, g, d in variants:
                    nk = key(d, maxc[d]) if b < 0 else key(d, b - c)
                    if b < 0 or b - c >= minc[d]:
                        alts.append(f"{g} {name(nk)}")
                        todo.append(nk)
            if s in a.final:
                alts.append('""')
            if emit is not None:
                emit(name(k), " | ".join(alts))
        return len(seen)

    def root(self, budget: int) -> str:
        return f"u{self.a.start}" if budget >= self.maxc[self.a.start] else \
            f"s{self.a.start}b{budget}"

    def count(self, budget: int) -> int:
        """How many rules the grammar for `budget` has."""
        return self._walk(budget, None)

    def estimate(self, budget: int) -> int:
        """An upper bound on count(budget), without visiting: per state, the budgets between its
        cheapest completion and what is left after its cheapest approach, or one when that is
        more than its dearest completion."""
        n = 0
        for s in range(self.a.size):
            top = budget - self.dist[s]
            if top < self.minc[s]:
                continue
            if top >= self.maxc[s]:
                n += 1 + max(0, int(min(top, self.maxc[s] - 1) - self.minc[s] + 1))
            else:
                n += int(top - self.minc[s] + 1)
        return n

    def grammar(self, budget: int, max_pairs: int | None = None) -> Budgeted:
        """The grammar of the texts that cost at most `budget` (lowered to stay within
        `max_pairs` rules). Raises GrammarError when even the shortest text costs more."""
        limit = MAX_PAIRS if max_pairs is None else max_pairs
        if self.shortest > budget:
            raise GrammarError(f"the shortest accepted text costs {self.shortest}")
        if self.estimate(budget) > limit:
            lo, hi = self.shortest, budget  # estimate() grows with the budget
            if self.estimate(lo) > limit:
                raise GrammarError("the grammar is too large to budget")
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.estimate(mid) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            budget = lo
        made = self._made.get(budget)
        if made is None:
            lines = [f"root ::= {self.root(budget)}"]
            lines += [f"{name} ::= {text}" for text, name in self.classes.items()]
            n = self._walk(budget, lambda nm, body: lines.append(f"{nm} ::= {body}"))
            made = Budgeted("\n".join(lines) + "\n", self.shortest, budget, n)
            if len(self._made) > 16:
                self._made.clear()
            self._made[budget] = made
        return made


def _min_costs_from(a: Automaton, ec: EdgeCosts) -> list[float]:
    """Cheapest way to each state from the start (Dijkstra)."""
    dist = [float("inf")] * a.size
    dist[a.start] = 0.0
    heap = [(0.0, a.start)]
    while heap:
        d0, s = heapq.heappop(heap)
        if d0 > dist[s]:
            continue
        for variants in ec[s]:
            for c, _, d in variants:
                if d0 + c < dist[d]:
                    dist[d] = d0 + c
                    heapq.heappush(heap, (d0 + c, d))
    return dist
