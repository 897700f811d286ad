"""Incremental UTF-8 decoding of token byte pieces (text/utf8.py)."""

from __future__ import annotations

import random

import pytest

from gemmakit.text import Utf8Stream

TEXTS = {
    "japanese": "日本語のテキストです。カタカナとひらがな、漢字。",
    "chinese": "汉字测试：你好，世界！繁體中文也要。",
    "arabic": "مرحبا بالعالم، هذا نص عربي.",
    "emoji": "👍🏽 🎉 🇯🇵 👩‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻 ❤️‍🔥",
    "mixed": "Gemma says: こんにちは 👋🏻 — مرحبا — 你好 — Ωμέγα — 𝕏 — e\u0301",
}
REPLACEMENT = "\ufffd"


def decode_pieces(pieces) -> tuple[str, list[str]]:
    s = Utf8Stream()
    outs = [s.feed(p) for p in pieces]
    outs.append(s.flush())
    return "".join(outs), outs


@pytest.mark.parametrize("name", TEXTS)
def test_byte_by_byte(name):
    text = TEXTS[name]
    data = text.encode("utf-8")
    out, outs = decode_pieces([data[i:i + 1] for i in range(len(data))])
    assert out == text
    assert all(REPLACEMENT not in o for o in outs)
    # every piece is valid text on its own (encodes back without surrogates)
    for o in outs:
        o.encode("utf-8")


@pytest.mark.parametrize("name", TEXTS)
def test_split_in_two_at_every_byte_boundary(name):
    text = TEXTS[name]
    data = text.encode("utf-8")
    for i in range(len(data) + 1):
        out, outs = decode_pieces([data[:i], data[i:]])
        assert out == text, i
        assert all(REPLACEMENT not in o for o in outs), i


@pytest.mark.parametrize("seed", range(10))
def test_random_boundaries(seed):
    rng = random.Random(seed)
    text = "".join(TEXTS.values())
    data = text.encode("utf-8")
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        out, outs = decode_pieces(pieces)
        assert out == text
        assert all(REPLACEMENT not in o for o in outs)


def test_incomplete_character_is_held_back_not_replaced():
    s = Utf8Stream()
    data = "日".encode()
    assert s.feed(data[:1]) == ""
    assert s.pending
    assert s.feed(data[1:2]) == ""
    assert s.feed(data[2:]) == "日"
    assert not s.pending


def test_emoji_zwj_sequence_split_inside_the_joiner():
    family = "👩‍👧"  # woman, ZWJ (3 bytes), girl
    data = family.encode()
    zwj_at = len("👩".encode())
    s = Utf8Stream()
    out = s.feed(data[:zwj_at + 1]) + s.feed(data[zwj_at + 1:zwj_at + 2])
    assert out == "👩"
    out += s.feed(data[zwj_at + 2:]) + s.flush()
    assert out == family


def test_incomplete_trailing_sequence_at_flush_becomes_replacement_character():
    s = Utf8Stream()
    data = "ok 😀".encode()
    assert s.feed(data[:-1]) == "ok "
    assert s.flush() == REPLACEMENT


def test_invalid_bytes_become_replacement_not_an_exception():
    s = Utf8Stream()
    out = s.feed(b"a\xffb") + s.flush()
    assert out == "a" + REPLACEMENT + "b"


def test_nothing_pending_at_start_and_empty_flush():
    s = Utf8Stream()
    assert not s.pending
    assert s.feed(b"") == ""
    assert s.flush() == ""
