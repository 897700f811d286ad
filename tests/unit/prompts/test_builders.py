"""Prompt builders: data-driven styles and cultures, FUNCTION_CALL prompts the parser reads."""

from __future__ import annotations

import pytest

from gemmakit.prompts import builders
from gemmakit.tools.examples import calculate_math, get_weather
from gemmakit.tools.parsers import get_parser
from gemmakit.types import ImagePart, TextPart


def test_cultures_and_styles_come_from_the_data_file():
    cultures, styles = builders.cultures(), builders.styles()
    assert {"ja-JP", "es-MX", "hi-IN", "sw-KE"} <= set(cultures)
    assert {"concise", "detailed", "step_by_step"} <= set(styles)
    assert all(c.language and c.conventions for c in cultures.values())


def test_multilingual_prompt_uses_the_culture_and_style():
    p = builders.multilingual_prompt("  How do I renew a passport? ", "ja-JP", "step_by_step")
    c, s = builders.cultures()["ja-JP"], builders.styles()["step_by_step"]
    assert p.startswith(f"Answer in {c.language}, for a reader in {c.region}.")
    assert c.conventions in p and s.instruction in p
    assert p.endswith("\n\nHow do I renew a passport?")


@pytest.mark.parametrize(("culture", "style"), [("xx-YY", "concise"), ("ja-JP", "loud")])
def test_unknown_culture_or_style_lists_the_known_ones(culture, style):
    with pytest.raises(ValueError, match="known"):
        builders.multilingual_prompt("hi", culture, style)


def test_function_call_prompt_lists_functions_and_its_example_parses():
    p = builders.function_call_prompt("Weather in Paris?", [get_weather, calculate_math])
    assert "- get_weather(location: string, unit: \"celsius\" | \"fahrenheit\" (optional))" in p
    assert "calculate_math(expression: string)" in p
    assert p.endswith("Task: Weather in Paris?")
    example = next(line for line in p.splitlines() if line.startswith("FUNCTION_CALL:"))
    [call] = get_parser("function_call").parse(example).calls
    assert call.name == "function_name" and call.arguments == {"param": "value",
                                                               "other_param": 42}


def test_image_prompts_place_the_images():
    a, b = ImagePart(b"1", "image/png"), ImagePart(b"2", "image/png")
    parts = builders.image_analysis_prompt(a, ["objects", "colours"], "concise")
    assert parts[0] is a and "objects; colours" in parts[1].text
    parts = builders.image_comparison_prompt([a, b], ["composition"])
    assert [p for p in parts if isinstance(p, ImagePart)] == [a, b]
    assert parts[0] == TextPart("Image 1:") and "composition" in parts[-1].text
    with pytest.raises(ValueError):
        builders.image_comparison_prompt([a])
