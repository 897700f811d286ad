"""Training data through the server's renderer and tokenizers: the ids a training example holds
before each assistant turn are the ids the server prefills for that conversation (both engines),
the loss covers exactly the model's turns through <end_of_turn>, and every bad line is refused
with its line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemmakit.finetune.data import DataError, Encoder, load
from gemmakit.prompts.gemma import END_OF_TURN
from gemmakit.service import Service
from gemmakit.types import Message, ToolCall

TOOLS = [{"type": "function", "function": {
    "name": "lookup_tide", "description": "High tide time at a harbour.",
    "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}},
                   "required": ["harbour"]}}}]
TOOL_LINE = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "When is high tide in Brest?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "lookup_tide", "arguments": "{\"harbour\": \"Brest\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "14:05"},
    {"role": "assistant", "content": "High tide in Brest is at 14:05."}]}
CHAT_LINE = {"messages": [{"role": "system", "content": "Answer in the form ANSWER: <word>."},
                          {"role": "user", "content": "What is the capital of Peru?"},
                          {"role": "assistant", "content": "ANSWER: Lima"}]}


def _write(tmp_path: Path, lines: list[object] | list[str], name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def _core(line: dict) -> tuple[list[Message], list[dict]]:
    msgs = []
    for m in line["messages"]:
        calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                      for c in m.get("tool_calls") or ())
        msgs.append(Message(m["role"], m.get("content"), tool_calls=calls,
                            tool_call_id=m.get("tool_call_id")))
    decl = [t["function"] for t in line.get("tools", [])]
    return msgs, decl


def _served(engine, line: dict, upto: int) -> list[int]:
    msgs, decl = _core(line)
    return Service(engine, "m").chat_prompt(msgs[:upto], tools=decl)[1]


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, v in enumerate([*mask, 0]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def test_chat_example_ids_are_the_served_prompt_and_the_mask_is_the_reply(engine) -> None:
    enc = Encoder(engine.tokenize)
    ids, mask = enc.encode(CHAT_LINE, "chat")
    served = _served(engine, CHAT_LINE, 2)
    assert ids[:len(served)] == served
    ((start, end),) = _spans(mask)
    assert start == len(served)
    reply = engine.tokenize("ANSWER: Lima") + engine.tokenize(END_OF_TURN, special=True)
    assert ids[start:end] == reply  # the reply and its <end_of_turn>, nothing else
    assert ids[end:] == engine.tokenize("\n")  # the newline after the turn is not learnt


def test_tool_example_each_turn_follows_the_served_prompt(engine) -> None:
    enc = Encoder(engine.tokenize)
    ids, mask = enc.encode(TOOL_LINE, "chat")
    spans = _spans(mask)
    assert len(spans) == 2  # the call and the final answer
    for (start, _), upto in zip(spans, (2, 4)):
        served = _served(engine, TOOL_LINE, upto)
        assert start == len(served) and ids[:start] == served
    call = engine.detokenize(ids[spans[0][0]:spans[0][1] - 1])
    assert json.loads(call) == {"name": "lookup_tide", "parameters": {"harbour": "Brest"}}
    assert "lookup_tide" in engine.detokenize(ids[:spans[0][0]])  # the declarations are shown


def test_train_ids_equal_what_both_engines_prefill(engine, hf_engine, dense_270m: Path) -> None:
    """The tokenizer training uses (the dense folder's, as the transformers engine calls it)
    gives the ids both engines' services prefill for the same messages."""
    from transformers import AutoTokenizer

    from gemmakit.finetune.train import hf_tokenize

    enc = Encoder(hf_tokenize(AutoTokenizer.from_pretrained(dense_270m)))
    for line, upto in ((CHAT_LINE, 2), (TOOL_LINE, 2), (TOOL_LINE, 4)):
        ids, _ = enc.encode(line, "chat")
        served_llama = _served(engine, line, upto)
        served_hf = _served(hf_engine, line, upto)
        assert served_llama == served_hf
        assert ids[:len(served_hf)] == served_hf


def test_prompt_completion_and_text_lines(engine, tmp_path: Path) -> None:
    enc = Encoder(engine.tokenize)
    ids, mask = enc.encode({"prompt": "2 + 2 =", "completion": " 4"}, "prompt_completion")
    head = Service(engine, "m").prepare_completion(["2 + 2 ="], _sampling(), "r") \
        .prompt_token_lists[0]
    assert ids[:len(head)] == head and not any(mask[:len(head)])
    assert ids[len(head):] == engine.tokenize(" 4") + [enc.eos] and all(mask[len(head):])
    ids, mask = enc.encode({"text": "Tides rise twice a day."}, "text")
    assert mask[0] == 0 and all(mask[1:]) and ids[-1] == enc.eos
    conv = {"prompt": [{"role": "user", "content": "Capital of Peru?"}],
            "completion": [{"role": "assistant", "content": "ANSWER: Lima"}]}
    ids, mask = enc.encode(conv, "prompt_completion")
    assert len(_spans(mask)) == 1
    ds = load(_write(tmp_path, [CHAT_LINE, CHAT_LINE]), enc, max_seq_len=512)
    assert ds.format == "chat" and len(ds.examples) == 2 and len(ds.sha256) == 64


def _sampling():
    from gemmakit.types import SamplingParams

    return SamplingParams(max_tokens=1)


BAD = [
    (["{not json"], "line 1: not valid JSON"),
    ([CHAT_LINE, "[1, 2]"], "line 2: a line must be a JSON object"),
    ([{"input": "x"}], "line 1: no 'messages', 'prompt'/'completion' or 'text' key"),
    ([{"prompt": "x"}], "line 1: a prompt/completion line needs 'completion'"),
    ([CHAT_LINE, {"text": "x"}], "line 2: this line is text but the file's first line is chat"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}],
     "line 1: messages[1].role"),
    ([{"messages": [{"role": "captain", "content": "hi"}]}], "line 1: messages[0].role"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "line 1: nothing to learn"),
    ([{"messages": [{"role": "user", "content": "hi"}], "temperature": 1}],
     "line 1: a chat line has 'messages' and optionally 'tools'"),
    ([{"text": 3}], "line 1: text: must be a string"),
    ([{"prompt": "a", "completion": ""}], "line 1: completion: must not be empty"),
    ([{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,iVBORw0KGgo="}}]}, {"role": "assistant", "content": "x"}]}],
     "line 1: messages[0].content: image and audio parts are not supported"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}],
     "line 1: messages[1].tool_calls[0].function.arguments"),
    ([{"tools": [{"type": "function", "function": {"name": "bad name!"}}], **CHAT_LINE}],
     "line 1: tools[0].function.name"),
]


@pytest.mark.parametrize(("lines", "needle"), BAD)
def test_bad_lines_name_the_line_and_field(engine, tmp_path: Path, lines, needle) -> None:
    with pytest.raises(DataError) as e:
        load(_write(tmp_path, lines), Encoder(engine.tokenize), max_seq_len=512)
    assert needle in e.value.message
    assert "d.jsonl" in e.value.message


def test_long_examples_are_refused_or_skipped_and_counted(engine, tmp_path: Path) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 200},
                         {"role": "assistant", "content": "ok"}]}
    path = _write(tmp_path, [CHAT_LINE, long, CHAT_LINE])
    enc = Encoder(engine.tokenize)
    with pytest.raises(DataError, match=r"line 2: \d+ tokens, longer than --max-seq-len 64"):
        load(path, enc, max_seq_len=64)
    ds = load(path, enc, max_seq_len=64, skip_long=True)
    assert ds.skipped_long == 1 and [e.line for e in ds.examples] == [1, 3]
    with pytest.raises(DataError, match="empty"):
        load(_write(tmp_path, ["", "  "]), enc, max_seq_len=64)
