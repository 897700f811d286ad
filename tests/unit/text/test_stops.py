"""Stop-sequence matching over a stream of text pieces (text/stops.py)."""

from __future__ import annotations

import random

import pytest

from gemmakit.text import StopMatcher


def run(stops, pieces) -> tuple[str, list[str], StopMatcher]:
    """Feed every piece, then flush; return (all output, per-feed outputs, the matcher)."""
    m = StopMatcher(stops)
    outs = [m.feed(p) for p in pieces]
    outs.append(m.flush())
    return "".join(outs), outs, m


def reference(text: str, stops) -> str:
    """The text before the stop that completes first, as a token-by-token stream sees it (ties:
    the one starting earlier); no stop: all of it."""
    hits = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in stops if s) if i != -1]
    return text[:min(hits)[1]] if hits else text


def random_split(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) \
        if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    # empty pieces happen in real streams (a token whose bytes are still incomplete)
    for _ in range(rng.randint(0, 2)):
        pieces.insert(rng.randint(0, len(pieces)), "")
    return pieces


def test_stop_spanning_several_feeds_is_never_emitted():
    out, outs, m = run(["<|END|>"], ["Hello <|", "END", "|> tail"])
    assert outs == ["Hello ", "", "", ""]
    assert out == "Hello "
    assert m.matched == "<|END|>"


def test_text_before_the_stop_in_the_same_feed_is_emitted():
    out, outs, m = run(["STOP"], ["abc STOP def"])
    assert outs[0] == "abc "
    assert out == "abc "
    assert m.matched == "STOP"


def test_partial_prefix_is_held_back_then_released():
    m = StopMatcher(["STOP"])
    assert m.feed("abcST") == "abc"
    assert m.feed("x") == "STx"
    assert m.matched is None


def test_held_prefix_released_by_flush():
    m = StopMatcher(["STOP"])
    assert m.feed("abcSTO") == "abc"
    assert m.flush() == "STO"
    assert m.matched is None


def test_flush_after_flush_gives_nothing_more():
    m = StopMatcher(["STOP"])
    m.feed("S")
    assert m.flush() == "S"
    assert m.flush() == ""


def test_hold_back_is_the_longest_possible_prefix_only():
    # "aab": "ab" is a prefix of "abc", "b" of "bcd"; "aab" itself is no prefix: emit "a".
    m = StopMatcher(["abc", "bcd"])
    assert m.feed("aab") == "a"
    assert m.feed("x") == "abx"


def test_false_start_then_real_stop():
    # "ST" looks like the start of "STOP", fails, then the real stop comes.
    out, _, m = run(["STOP"], ["xST", "STO", "P!"])
    assert out == "xST"
    assert m.matched == "STOP"


@pytest.mark.parametrize("stops", [["world", "lo"], ["lo", "world"]])
def test_earliest_of_several_stops_wins(stops):
    out, _, m = run(stops, ["hello world"])
    assert out == "hel"
    assert m.matched == "lo"


def test_earliest_stop_wins_across_feeds():
    out, _, m = run(["END", "ZZ"], ["aEN", "D ZZ"])
    assert out == "a"
    assert m.matched == "END"


def test_after_a_match_further_feeds_return_nothing():
    m = StopMatcher(["\n\n"])
    assert m.feed("line\n\nmore") == "line"
    assert m.feed("even more") == ""
    assert m.feed("\n\n") == ""
    assert m.flush() == ""
    assert m.matched == "\n\n"


@pytest.mark.parametrize("stops", [[], [""], ()])
def test_no_stops_is_passthrough(stops):
    m = StopMatcher(stops)
    for piece in ["a", "<|", "", "END|>", " 日本 "]:
        assert m.feed(piece) == piece
    assert m.flush() == ""
    assert m.matched is None


def test_stop_at_the_very_start():
    out, _, m = run(["User:"], ["User:", " hi"])
    assert out == ""
    assert m.matched == "User:"


def test_multibyte_stop_strings():
    out, _, m = run(["。終"], ["日本語", "。", "終わり"])
    assert out == "日本語"
    assert m.matched == "。終"


def test_repeated_prefix_characters():
    # stop "aab": text "aaab" — the held "aa" must shift by one, not be thrown away.
    out, _, m = run(["aab"], ["a", "a", "a", "b", "c"])
    assert out == "a"
    assert m.matched == "aab"


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_give_the_text_up_to_the_first_stop(seed):
    rng = random.Random(seed)
    for _ in range(150):
        alphabet = rng.choice(["ab", "abc", "a<|>", "日本語"])
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(0, 3))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        expected = reference(text, stops)
        for _ in range(4):
            pieces = random_split(rng, text)
            out, outs, m = run(stops, pieces)
            assert out == expected, (text, stops, pieces, outs)
            if expected != text:
                assert m.matched is not None
                assert text[len(expected):].startswith(m.matched)
            else:
                assert m.matched is None


_NESTED = ["<end>", "end"]  # "end" lies strictly inside "<end>"


@pytest.mark.parametrize("pieces", [["x<end>"], ["x<", "end>"], ["x<en", "d>"], list("x<end>"),
                                    ["x<e", "nd", ">"], ["x<end", ">"]])
def test_nested_stops_do_not_depend_on_the_split(pieces):
    out, _, m = run(_NESTED, pieces)
    # "end" completes before "<end>" does: a stream stops there, whatever the split.
    assert out == reference("x<end>", _NESTED) == "x<"
    assert m.matched == "end"
