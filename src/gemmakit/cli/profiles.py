"""`gemmakit models --profiles MODEL [--measure]`: the loading profiles of one model."""

from __future__ import annotations

import json
from typing import Any

from gemmakit.settings import Settings


def print_profiles(settings: Settings, model: str, *, as_json: bool, measure: bool) -> int:
    from gemmakit.catalog import resolve
    from gemmakit.engines import engine_class

    ref = resolve(model, settings.models_dir)
    engine = engine_class(settings.engine)
    rows: list[dict[str, Any]] = [dict(r) for r in engine.profile_table(ref, settings.home)]
    if measure:
        for r in rows:
            if r["refused"] is None:
                r.update(engine.measure_profile(r, threads=settings.threads))
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("profile", "plan", "weights", *(("RSS added", "peak RSS added", "load s",
                                                    "decode tok/s")
                                                  if measure else ()),
                  title=f"{ref.name} on {settings.engine}")
    for r in rows:
        mem = f"{r['weights_bytes'] / 1e6:.0f} MB" if r["weights_bytes"] else "-"
        extra: tuple[str, ...] = ()
        if measure:
            extra = (*(f"{r[k] / 1e6:.0f} MB" if k in r else "-"
                       for k in ("rss_added_bytes", "peak_rss_added_bytes")),
                     str(r.get("load_s", "-")), str(r.get("decode_tokens_per_s", "-")))
        table.add_row(r["profile"], r["plan"] or f"refused: {r['refused']}", mem, *extra)
    Console(width=160).print(table)
    return 0
