"""Function-calling training data for the proof in docs/finetune.md: chat lines with `tools`,
every function of its own making (none shares a name with evals/tools.jsonl), in the categories
that evaluation has: single calls, parallel calls, enums, arrays, integer bounds, nested objects,
non-English requests, and no-call turns (tools declared, none fits).

    python examples/finetune-tools/make_data.py   # writes train.jsonl and eval.jsonl beside it
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def fn(name: str, desc: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


S = {"type": "string"}
TOOLS = {
    "reserve_table": fn("reserve_table", "Reserve a table at a restaurant.",
                        {"restaurant": S, "party_size": {"type": "integer", "minimum": 1,
                                                         "maximum": 12}, "time": S},
                        ["restaurant", "party_size", "time"]),
    "convert_currency": fn("convert_currency", "Convert an amount between currencies.",
                           {"amount": {"type": "number"}, "from_currency": S,
                            "to_currency": S}, ["amount", "from_currency", "to_currency"]),
    "lookup_tide": fn("lookup_tide", "High and low tide times at a harbour.",
                      {"harbour": S}, ["harbour"]),
    "track_parcel": fn("track_parcel", "Where a parcel is now.", {"tracking_number": S},
                       ["tracking_number"]),
    "set_alarm": fn("set_alarm", "Set an alarm clock.", {"time": S, "label": S}, ["time"]),
    "get_stock_quote": fn("get_stock_quote", "The latest price of a stock.", {"symbol": S},
                          ["symbol"]),
    "find_recipe": fn("find_recipe", "Find recipes that use the given ingredients.",
                      {"ingredients": {"type": "array", "items": S}}, ["ingredients"]),
    "water_plants": fn("water_plants", "Water a garden zone.",
                       {"zone": {"type": "string", "enum": ["front", "back", "greenhouse"]},
                        "minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
                       ["zone", "minutes"]),
    "ship_package": fn("ship_package", "Ship a package to an address.",
                       {"address": {"type": "object", "properties": {
                           "street": S, "city": S, "postcode": S},
                           "required": ["street", "city", "postcode"]},
                        "weight_kg": {"type": "number"}}, ["address", "weight_kg"]),
}

RESTAURANTS = ["Chez Marie", "Blue Lotus", "Trattoria Sole", "The Oak Room", "Sakura House"]
TIMES = ["7pm", "8:30pm", "noon", "6:15pm", "9pm"]
CURR = [("dollars", "USD"), ("euros", "EUR"), ("yen", "JPY"), ("pounds", "GBP")]
HARBOURS = ["Brest", "Dover", "Halifax", "Kiel", "Cadiz", "Galway"]
SYMBOLS = [("Apple", "AAPL"), ("Microsoft", "MSFT"), ("Tesla", "TSLA"), ("Nvidia", "NVDA")]
FOODS = ["eggs", "spinach", "rice", "chicken", "tomatoes", "lentils", "mushrooms", "tofu"]
CITIES = [("12 Rue Cler", "Paris", "75007"), ("5 High St", "Leeds", "LS1 4AB"),
          ("88 Elm Ave", "Austin", "78701")]
CHAT = ["Thanks, that's all for now.", "Tell me a fun fact about owls.",
        "What does 'serendipity' mean?", "Good morning! How are you?",
        "Write one sentence about the sea.", "Merci beaucoup, bonne soirée !",
        "Who wrote Hamlet?", "¿Qué tal tu día?"]
CHAT_REPLIES = ["You're welcome! Have a great day.",
                "Owls can turn their heads about 270 degrees.",
                "Serendipity means finding something good by chance.",
                "Good morning! I'm doing well, thank you. How can I help?",
                "The sea rolled in, grey and patient, under a low sky.",
                "Avec plaisir, bonne soirée à vous aussi !",
                "Hamlet was written by William Shakespeare.",
                "¡Muy bien, gracias! ¿En qué puedo ayudarte?"]


def call(name: str, args: dict[str, Any], k: int = 0) -> dict[str, Any]:
    return {"id": f"call_{k}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def single(r: random.Random) -> tuple[str, list[dict[str, Any]], list[str]]:
    kind = r.choice(["reserve", "convert", "tide", "parcel", "alarm", "stock", "recipe",
                     "water", "ship", "fr", "es", "de"])
    if kind == "reserve":
        n, rest, t = r.randint(1, 12), r.choice(RESTAURANTS), r.choice(TIMES)
        return (f"Book a table for {n} at {rest} at {t}.",
                [call("reserve_table", {"restaurant": rest, "party_size": n, "time": t})],
                ["reserve_table"])
    if kind == "convert":
        amt = r.choice([20, 75, 150, 1200, 9.5])
        (a, ca), (b, cb) = r.sample(CURR, 2)
        return (f"How much is {amt} {a} in {b}?",
                [call("convert_currency", {"amount": amt, "from_currency": ca,
                                           "to_currency": cb})], ["convert_currency"])
    if kind == "tide":
        h = r.choice(HARBOURS)
        return (f"When is high tide in {h}?", [call("lookup_tide", {"harbour": h})],
                ["lookup_tide"])
    if kind == "parcel":
        num = f"ZX{r.randint(100000, 999999)}"
        return (f"Where is my parcel {num}?", [call("track_parcel", {"tracking_number": num})],
                ["track_parcel"])
    if kind == "alarm":
        t = r.choice(["6:30", "7:00", "5:45"])
        label = r.choice(["gym", "flight", "meeting"])
        return (f"Wake me up at {t} for my {label}.",
                [call("set_alarm", {"time": t, "label": label})], ["set_alarm"])
    if kind == "stock":
        company, sym = r.choice(SYMBOLS)
        return (f"What's {company} trading at?", [call("get_stock_quote", {"symbol": sym})],
                ["get_stock_quote"])
    if kind == "recipe":
        ing = r.sample(FOODS, r.randint(2, 3))
        return (f"What can I cook with {', '.join(ing[:-1])} and {ing[-1]}?",
                [call("find_recipe", {"ingredients": ing})], ["find_recipe"])
    if kind == "water":
        zone, m = r.choice(["front", "back", "greenhouse"]), r.randint(5, 40)
        return (f"Water the {zone} garden for {m} minutes.",
                [call("water_plants", {"zone": zone, "minutes": m})], ["water_plants"])
    if kind == "ship":
        street, city, pc = r.choice(CITIES)
        w = r.choice([0.5, 2, 3.2])
        return (f"Ship a {w} kg package to {street}, {city} {pc}.",
                [call("ship_package", {"address": {"street": street, "city": city,
                                                   "postcode": pc}, "weight_kg": w})],
                ["ship_package"])
    if kind == "fr":
        h = r.choice(HARBOURS)
        return (f"À quelle heure est la marée haute à {h} ?",
                [call("lookup_tide", {"harbour": h})], ["lookup_tide"])
    if kind == "es":
        n, rest = r.randint(2, 8), r.choice(RESTAURANTS)
        return (f"Reserva una mesa para {n} en {rest} a las 9pm.",
                [call("reserve_table", {"restaurant": rest, "party_size": n, "time": "9pm"})],
                ["reserve_table"])
    company, sym = r.choice(SYMBOLS)
    return (f"Wie steht die Aktie von {company}?", [call("get_stock_quote", {"symbol": sym})],
            ["get_stock_quote"])


def example(r: random.Random) -> dict[str, Any]:
    roll = r.random()
    if roll < 0.18:  # no call fits
        i = r.randrange(len(CHAT))
        tools = r.sample(sorted(TOOLS), 2)
        return {"tools": [TOOLS[t] for t in tools], "messages": [
            {"role": "user", "content": CHAT[i]},
            {"role": "assistant", "content": CHAT_REPLIES[i]}]}
    if roll < 0.33:  # parallel: two calls
        h1, h2 = r.sample(HARBOURS, 2)
        if r.random() < 0.5:
            text = f"Get the tides for {h1} and {h2}."
            calls = [call("lookup_tide", {"harbour": h1}),
                     call("lookup_tide", {"harbour": h2}, 1)]
            used = ["lookup_tide"]
        else:
            (c1, s1), (c2, s2) = r.sample(SYMBOLS, 2)
            text = f"Quote {c1} and {c2} for me."
            calls = [call("get_stock_quote", {"symbol": s1}),
                     call("get_stock_quote", {"symbol": s2}, 1)]
            used = ["get_stock_quote"]
    else:
        text, calls, used = single(r)
    others = [t for t in sorted(TOOLS) if t not in used]
    tools = used + r.sample(others, r.randint(1, 2))
    r.shuffle(tools)
    return {"tools": [TOOLS[t] for t in tools], "messages": [
        {"role": "user", "content": text},
        {"role": "assistant", "content": None, "tool_calls": calls}]}


def main() -> None:
    r = random.Random(18)
    here = Path(__file__).resolve().parent
    for name, n in (("train.jsonl", 96), ("eval.jsonl", 12)):
        with (here / name).open("w") as f:
            for _ in range(n):
                f.write(json.dumps(example(r), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
