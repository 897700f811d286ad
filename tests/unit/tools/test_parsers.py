"""The contract every call parser meets, through the same cases, streaming and non-streaming:
prose becomes content (trimmed, None when empty), each call a (name, arguments) pair, and the
streamed pieces rebuild exactly the non-streamed result, however the text is split."""

from __future__ import annotations

import pytest

from gemmakit.tools.parsers import PARSERS, ParsedCall, StreamingParser, get_parser

W = ParsedCall("get_weather", {"location": "Tokyo"})
M = ParsedCall("calculate_math", {"expression": "2 + 2"})

# (text, content, calls) per parser: the same situations written in each syntax.
CASES: dict[str, list[tuple[str, str | None, list[ParsedCall]]]] = {
    "json": [
        ('{"name": "get_weather", "parameters": {"location": "Tokyo"}}', None, [W]),
        ('{"function_name": "get_weather", "arguments": {"location": "Tokyo"}}', None, [W]),
        ('{"name": "get_weather", "arguments": "{\\"location\\": \\"Tokyo\\"}"}', None, [W]),
        ('Sure, checking.\n{"name": "get_weather", "parameters": {"location": "Tokyo"}}',
         "Sure, checking.", [W]),
        ('[{"name": "get_weather", "parameters": {"location": "Tokyo"}}, '
         '{"name": "calculate_math", "parameters": {"expression": "2 + 2"}}]', None, [W, M]),
        ('One moment.\n```json\n{"name": "get_weather", "parameters": {"location": "Tokyo"}}\n```'
         '\nDone.', "One moment.\n\nDone.", [W]),
        ('{"name": "get_weather", "parameters": {"location": "Tokyo"}}\n'
         '{"name": "calculate_math", "parameters": {"expression": "2 + 2"}}', None, [W, M]),
        ("  Just prose, no call.  ", "Just prose, no call.", []),
        ('{"city": "Tokyo"}', '{"city": "Tokyo"}', []),  # JSON, but not a call
        ('[1, 2, 3]\nafter', "[1, 2, 3]\nafter", []),
        ('{"name": "get_weather", "parameters": {"location": "Tok',
         '{"name": "get_weather", "parameters": {"location": "Tok', []),  # cut short
        ("", None, []),
    ],
    "pythonic": [
        ('[get_weather(location="Tokyo")]', None, [W]),
        ('[get_weather(location="Tokyo"), calculate_math(expression="2 + 2")]', None, [W, M]),
        ('```tool_code\nget_weather(location="Tokyo")\n```', None, [W]),
        ('```tool_code\n[get_weather(location="Tokyo")]\n```', None, [W]),
        ('Let me look.\n[get_weather(location="Tokyo")]\nOK?', "Let me look.\n\nOK?", [W]),
        ("[f(a=true, b=null, c=[1, -2.5], d={'k': 'v'})]", None,
         [ParsedCall("f", {"a": True, "b": None, "c": [1, -2.5], "d": {"k": "v"}})]),
        ('[get_weather("Tokyo")]', '[get_weather("Tokyo")]', []),  # positional: not a call
        ('[__import__("os").system(cmd="x")]', '[__import__("os").system(cmd="x")]', []),
        ("[1, 2] and more", "[1, 2] and more", []),
        ("Plain answer.", "Plain answer.", []),
        ('[get_weather(location="Tok', '[get_weather(location="Tok', []),
    ],
    "function_call": [
        ('FUNCTION_CALL: get_weather(location="Tokyo")', None, [W]),
        ('I will check.\nFUNCTION_CALL: get_weather(location="Tokyo")\n'
         'FUNCTION_CALL: calculate_math(expression="2 + 2")', "I will check.", [W, M]),
        ('  FUNCTION_CALL: get_weather(location="Tokyo")\nThat is all.', "That is all.", [W]),
        ('FUNCTION_CALL: get_weather(location=os.environ)',
         'FUNCTION_CALL: get_weather(location=os.environ)', []),  # not a literal
        ("FUNCTION_CALLS are described in the docs.",
         "FUNCTION_CALLS are described in the docs.", []),
        ("No call here.", "No call here.", []),
        ('FUNCTION_CALL: get_weather(location="To', 'FUNCTION_CALL: get_weather(location="To', []),
    ],
}

ALL = [(key, *case) for key, cases in CASES.items() for case in cases]
IDS = [f"{key}-{i}" for key, cases in CASES.items() for i in range(len(cases))]


def test_every_registered_parser_has_cases():
    assert set(CASES) == set(PARSERS)


@pytest.mark.parametrize(("key", "text", "content", "calls"), ALL, ids=IDS)
def test_parse(key, text, content, calls):
    result = get_parser(key).parse(text)
    assert result.content == content
    assert result.calls == calls


def _stream(key: str, text: str, size: int) -> tuple[str, list[ParsedCall], list[str]]:
    sp = StreamingParser(get_parser(key))
    pieces = [sp.feed(text[i:i + size]) for i in range(0, len(text), size)]
    rest, result = sp.finish()
    pieces.append(rest)
    return "".join(pieces), result.calls, pieces


@pytest.mark.parametrize("size", [1, 2, 5, 10_000])
@pytest.mark.parametrize(("key", "text", "content", "calls"), ALL, ids=IDS)
def test_stream_rebuilds_the_parse(key, text, content, calls, size):
    streamed, streamed_calls, _ = _stream(key, text, size)
    assert streamed == (content or "")
    assert streamed_calls == calls


@pytest.mark.parametrize("key", sorted(PARSERS))
def test_prose_streams_before_the_end(key):
    """Prose before a call is sent as it arrives, not held to the end."""
    call = CASES[key][0][0]
    text = "Let me check that for you.\n" + call
    _, calls, pieces = _stream(key, text, 1)
    assert calls
    sent_early = "".join(pieces[:-1])
    assert sent_early == "Let me check that for you."
    assert pieces[-1] == ""


def test_arguments_json_is_a_json_string():
    call = get_parser("pythonic").parse('[f(x="é", n=2)]').calls[0]
    assert call.arguments_json == '{"x": "é", "n": 2}'


def test_unknown_parser_is_a_config_error():
    from gemmakit.errors import ConfigError

    with pytest.raises(ConfigError, match="available"):
        get_parser("nope")
