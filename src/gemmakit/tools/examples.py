"""Two example tools, written safely: a weather lookup against a local stub dataset (no network)
and `calculate_math`, an arithmetic evaluator over Python's own parser (`ast`) that evaluates only
numbers and arithmetic operators — never `eval`.

Use them with ``gemmakit chat --tools src/gemmakit/tools/examples.py`` or
``gemmakit.run_tools(messages, tools=[get_weather, calculate_math])``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any, Literal

from gemmakit.tools.schema import tool


@cache
def _weather_data() -> dict[str, dict[str, Any]]:
    data = json.loads(files("gemmakit.tools").joinpath("data/weather.json").read_text("utf-8"))
    data.pop("_about", None)
    return data


@tool
def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather in a city.

    Args:
        location: City name, e.g. "Tokyo" or "New York".
        unit: Temperature unit of the answer.
    """
    entry = _weather_data().get(location.strip().lower())
    if entry is None:
        known = ", ".join(sorted(v["city"] for v in _weather_data().values()))
        raise LookupError(f"no weather data for '{location}' (known cities: {known})")
    temp = entry["temperature_c"]
    if unit == "fahrenheit":
        temp = round(temp * 9 / 5 + 32, 1)
    return {"location": entry["city"], "temperature": temp, "unit": unit,
            "condition": entry["condition"], "humidity_pct": entry["humidity_pct"],
            "wind_kph": entry["wind_kph"]}


# --- arithmetic --------------------------------------------------------------------------------
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos,
                                                          ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "floor": math.floor,
    "ceil": math.ceil, "log": math.log, "log10": math.log10, "exp": math.exp,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_MAGNITUDE = 1e300


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
            raise ValueError("the result is out of range")
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _FUNCTIONS and not node.keywords:
        return _FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


@tool
def calculate_math(expression: str) -> dict:
    """Evaluate an arithmetic expression exactly as written.

    Args:
        expression: Arithmetic with + - * / // % ** and parentheses, the constants pi and e, and
            the functions sqrt, abs, round, floor, ceil, log, log10, exp, sin, cos, tan, min, max.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return {"expression": expression, "result": value}


__all__ = ["calculate_math", "get_weather"]
