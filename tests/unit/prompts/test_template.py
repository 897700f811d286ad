"""Model-file chat templates (prompts/template.py): rendered in Jinja's immutable sandbox and
checked against gemmakit's own renderer."""

from __future__ import annotations

import pytest

from gemmakit.prompts.template import (
    TemplateRenderError,
    check_template,
    gemma_chat_template,
    render_template,
)
from gemmakit.types import ImagePart, Message, TextPart

# Gemma's turn format as a chat template, shipped with gemmakit (GET /tokenizer_info serves it).
GEMMA_TEMPLATE = gemma_chat_template()


def test_a_correct_gemma_template_agrees_with_ours():
    assert check_template(GEMMA_TEMPLATE) == []


def test_template_renders_expected_text_directly():
    out = render_template(GEMMA_TEMPLATE, [Message("system", "S"), Message("user", " hi "),
                                           Message("assistant", "yo"), Message("user", "x")])
    assert out == ("<bos><start_of_turn>user\nS\n\nhi<end_of_turn>\n"
                   "<start_of_turn>model\nyo<end_of_turn>\n"
                   "<start_of_turn>user\nx<end_of_turn>\n<start_of_turn>model\n")


def test_template_sees_parts_and_images():
    img = ImagePart(data=b"x", mime_type="image/png")
    out = render_template(GEMMA_TEMPLATE, [Message("user", [TextPart(" a "), img, TextPart("b")])])
    assert out == "<bos><start_of_turn>user\na<start_of_image>b<end_of_turn>\n<start_of_turn>model\n"


def test_add_generation_prompt_is_passed_through():
    out = render_template(GEMMA_TEMPLATE, [Message("user", "a"), Message("assistant", "b")],
                          add_generation_prompt=False)
    assert out.endswith("<start_of_turn>model\nb<end_of_turn>\n")


def test_wrong_role_name_is_reported():
    wrong = GEMMA_TEMPLATE.replace('("model" if m.role == "assistant" else "user")', "m.role")
    assert wrong != GEMMA_TEMPLATE
    disagreements = check_template(wrong)
    assert disagreements
    assert any("<start_of_turn>assistant" in d.theirs for d in disagreements)
    for d in disagreements:
        assert d.ours != d.theirs
        assert "<start_of_turn>assistant" not in d.ours


def test_untrimmed_content_is_reported():
    wrong = GEMMA_TEMPLATE.replace("m.content | trim", "m.content").replace(
        "part.text | trim", "part.text")
    assert wrong != GEMMA_TEMPLATE
    disagreements = check_template(wrong)
    assert disagreements
    for d in disagreements:
        assert d.ours != d.theirs
        # the same text with whitespace: ours is what theirs would be, trimmed
        assert len(d.theirs) > len(d.ours)


def test_template_that_drops_the_system_message_is_reported():
    wrong = GEMMA_TEMPLATE.replace("{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}", "")
    assert wrong != GEMMA_TEMPLATE
    assert check_template(wrong)


def test_a_template_that_raises_is_reported_not_propagated():
    disagreements = check_template("{{ raise_exception('nope') }}")
    assert disagreements
    assert all(d.theirs.startswith("<error:") for d in disagreements)


def test_raise_exception_becomes_template_render_error():
    with pytest.raises(TemplateRenderError, match="custom failure"):
        render_template("{{ raise_exception('custom failure') }}", [Message("user", "a")])


def test_template_syntax_error_becomes_template_render_error():
    with pytest.raises(TemplateRenderError):
        render_template("{% for %}", [Message("user", "a")])


# --- the sandbox --------------------------------------------------------------------------------
@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ raise_exception.__code__.co_filename }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('echo pwned').read() }}",
    "{{ messages[0].__class__ }}",
    "{{ (messages|attr('__class__')) }}",
])
def test_sandbox_refuses_access_to_internals(template):
    try:
        out = render_template(template, [Message("user", "hello")])
    except TemplateRenderError:
        return
    for leak in ("class", "type", "object", "module", "function", "pwned", "/", "<"):
        assert leak not in out, out


@pytest.mark.parametrize("template", [
    "{% set x = [] %}{{ x.append(1) }}{{ x }}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "{{ messages.pop() }}",
])
def test_sandbox_is_immutable(template):
    with pytest.raises(TemplateRenderError):
        render_template(template, [Message("user", "hello")])


def test_a_model_files_template_is_checked_when_the_model_loads(fake_engine_class, caplog):
    """The composition root checks an engine's own template against ours at load (and says so
    in the log); a template that disagrees is reported, and gemmakit still serves its own."""
    import logging

    from gemmakit.compose import build_pipeline, check_chat_template

    engine = fake_engine_class()
    assert check_chat_template(engine, "m") is None  # no template in the file: nothing to check
    engine.chat_template = GEMMA_TEMPLATE
    with caplog.at_level(logging.INFO, logger="gemmakit"):
        build_pipeline(engine, "m")
    assert "agrees with gemmakit's Gemma renderer" in caplog.text
    engine.chat_template = GEMMA_TEMPLATE.replace('"model" if', '"assistant" if')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gemmakit"):
        assert check_chat_template(engine, "m") > 0
    assert "differently from gemmakit's Gemma renderer" in caplog.text
