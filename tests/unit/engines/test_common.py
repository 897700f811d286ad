"""The per-request plumbing both built-in engines share."""

from __future__ import annotations

import pytest

from gemmakit.engines.common import TokenText, finish_stats, generation_budget
from gemmakit.errors import ContextLengthExceededError
from gemmakit.types import GenerationRequest, SamplingParams


def _req(n_prompt: int, max_tokens: int | None) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=list(range(n_prompt)), request_id="r",
                             sampling=SamplingParams(max_tokens=max_tokens))


def test_budget_is_max_tokens_or_the_room_left():
    assert generation_budget(_req(10, 5), 100) == 5
    assert generation_budget(_req(10, None), 100) == 90
    assert generation_budget(_req(10, 90), 100) == 90


@pytest.mark.parametrize(("n_prompt", "max_tokens"), [(0, 5), (100, None), (120, None), (10, 91)])
def test_budget_refuses_what_cannot_fit(n_prompt, max_tokens):
    with pytest.raises(ContextLengthExceededError) as ei:
        generation_budget(_req(n_prompt, max_tokens), 100)
    assert ei.value.status == 400


def test_text_holds_a_split_character_and_ends_at_the_budget():
    t = TokenText([], max_tokens=3)
    euro = "€".encode()
    assert t.feed(euro[:1]) == ("", None)  # half a character is held back
    assert t.feed(euro[1:]) == ("€", None)
    assert t.feed(b"!") == ("!", "length")
    assert t.count == 3


def test_stop_string_across_tokens_is_never_emitted():
    t = TokenText(["END"], max_tokens=10)
    out = [t.feed(p) for p in (b"ab", b"cE", b"N", b"Dx")]
    assert "".join(text for text, _ in out) == "abc"
    assert out[-1][1] == "stop" and all(f is None for _, f in out[:-1])


def test_stop_token_flushes_a_partial_match_as_text():
    t = TokenText(["END"], max_tokens=10)
    assert t.feed(b"hi E") == ("hi ", None)  # "E" might start "END"
    assert t.feed(None) == ("E", "stop")


def test_close_returns_what_was_held():
    t = TokenText(["END"], max_tokens=10)
    t.feed(b"ok EN")
    assert t.close() == "EN"


def test_finish_stats_times():
    s = finish_stats(prompt_tokens=4, completion_tokens=11, t_submit=1.0, t_start=1.5,
                     t_first=2.0, now=3.0, cached_prompt_tokens=2)
    assert (s.time_to_first_token_s, s.queue_time_s, s.decode_tokens_per_s) == (1.0, 0.5, 10.0)
    assert s.cached_prompt_tokens == 2
    never = finish_stats(prompt_tokens=4, completion_tokens=0, t_submit=1.0, t_start=0.0,
                         t_first=None, now=3.0)
    assert never.time_to_first_token_s is None and never.queue_time_s == 2.0
