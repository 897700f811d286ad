"""What the gateway sends each kind of upstream, and how it reads their streamed events."""

from __future__ import annotations

from gemmakit.engines.remote.dialects import parse_event, request_body
from gemmakit.types import GenerationRequest, SamplingParams


def req(**sp) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=[2, 818], sampling=SamplingParams(**sp),
                             request_id="r", stop_token_ids=frozenset({106}))


def test_each_kind_is_asked_for_the_generated_ids_its_own_way():
    assert request_body("vllm", "m", req(), 8)["return_token_ids"] is True
    assert request_body("vllm", "m", req(), 8)["stop_token_ids"] == [106]
    ls = request_body("llama-server", "m", req(repetition_penalty=1.2), 8)
    assert ls["verbose"] is True and "return_token_ids" not in ls
    assert ls["repeat_penalty"] == 1.2
    plain = request_body("openai", "m", req(), 8)
    assert "verbose" not in plain and "return_token_ids" not in plain


def test_llama_server_events_give_their_token_ids():
    # A streamed event as llama-server sends it with verbose: one token, its id in __verbose.
    ev = parse_event({"choices": [{"text": " of", "index": 0, "logprobs": None,
                                   "finish_reason": None}],
                      "__verbose": {"content": " of", "tokens": [529], "stop": False}})
    assert ev.text == " of" and ev.token_ids == [529]
    # Its final event: no tokens, the finish reason and usage.
    end = parse_event({"choices": [{"text": "", "index": 0, "logprobs": None,
                                    "finish_reason": "length"}],
                       "usage": {"completion_tokens": 2, "prompt_tokens": 3},
                       "__verbose": {"tokens": [], "stop": True}})
    assert end.token_ids == [] and end.finish_reason == "length" and end.usage is not None


def test_llama_server_logprobs_are_read_from_its_content_shape():
    ev = parse_event({"choices": [{"text": " of", "index": 0, "finish_reason": None,
                                   "logprobs": {"content": [{
                                       "id": 529, "token": " of", "logprob": -0.8,
                                       "top_logprobs": [{"id": 529, "token": " of",
                                                         "logprob": -0.8},
                                                        {"id": 3207, "token": " city",
                                                         "logprob": -1.7}]}]}}]})
    assert ev.token_ids == [529]  # the ids come with the logprobs even without verbose
    assert ev.tokens == [" of"] and ev.token_logprobs == [-0.8]
    assert ev.top_logprobs == [{" of": -0.8, " city": -1.7}]


def test_openai_legacy_logprobs_and_missing_ids():
    ev = parse_event({"choices": [{"text": "Hi", "finish_reason": None, "logprobs": {
        "tokens": ["Hi"], "token_logprobs": [-0.1], "top_logprobs": [{"Hi": -0.1}]}}]})
    assert ev.token_ids is None and ev.tokens == ["Hi"] and ev.token_logprobs == [-0.1]
    assert parse_event({"error": {"message": "boom"}}).error == {"message": "boom"}
