"""Prompt lookup's n-gram index: what it drafts from a token history."""

from __future__ import annotations

from gemmakit.engines.llamacpp import NgramIndex


def index(tokens: list[int]) -> NgramIndex:
    ix = NgramIndex()
    ix.sync(tokens, [])
    return ix


def test_drafts_what_followed_the_last_ngram_where_it_last_occurred():
    # ... 1 2 3 -> 4 5 6 earlier; the history ends in 1 2 3 again.
    ix = index([9, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3])
    assert ix.draft(3) == [4, 5, 6]
    assert ix.draft(10) == [4, 5, 6, 7, 8, 1, 2, 3]  # up to the end of the history
    # The latest earlier occurrence wins.
    ix = index([1, 2, 10, 1, 2, 20, 1, 2])
    assert ix.draft(1) == [20]


def test_the_longest_matching_ngram_is_preferred():
    # "5 1 2" occurred once followed by 7; "1 2" alone last occurred followed by 8.
    ix = index([5, 1, 2, 7, 0, 1, 2, 8, 5, 1, 2])
    assert ix.draft(1) == [7]


def test_no_draft_without_a_repeated_ngram_of_at_least_two_tokens():
    assert index([1, 2, 3, 4, 5]).draft(4) == []
    assert index([1, 9, 1]).draft(4) == []  # a single repeated token is too weak a match
    assert index([]).draft(4) == []


def test_sync_extends_incrementally_like_a_fresh_index():
    history = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 1, 4]
    prompt, reply = history[:10], history[10:]
    ix = NgramIndex()
    for k in range(len(reply) + 1):  # a prompt, then its reply growing a token at a time
        ix.sync(prompt, reply[:k])
        assert ix.tokens == history[:10 + k]
        assert ix.draft(5) == index(history[:10 + k]).draft(5)
    assert ix.draft(5) == [1, 5, 9, 2, 6]  # "3 1 4" continued as at the start
