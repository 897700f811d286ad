"""Command-line flags generated from typed pydantic models: one field, one flag, its docstring the
help text. Flags default to None ("not given") so lower-precedence sources can fill them."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from gemmakit.errors import ConfigError


def _base_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin is typing.Annotated:
        return _base_type(typing.get_args(annotation)[0])
    return annotation


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> None:
    for name, info in model.model_fields.items():
        if (only is not None and name not in only) or name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or "").strip()
        t = _base_type(info.annotation)
        if typing.get_origin(t) is Literal:
            parser.add_argument(flag, choices=list(typing.get_args(t)), default=None,
                                help=help_text)
        elif t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif typing.get_origin(t) is list:
            (item,) = typing.get_args(t) or (str,)
            if isinstance(item, type) and issubclass(item, BaseModel):
                continue  # tables (TOML only), no flag
            parser.add_argument(flag, action="append", default=None, help=help_text)
        elif t in (int, float, str, Path):
            parser.add_argument(flag, type=t, default=None, help=help_text)


def given(ns: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags of `model` that were given on the command line."""
    return {k: v for k, v in vars(ns).items() if k in model.model_fields and v is not None}


def build(model: type[BaseModel], ns: argparse.Namespace) -> Any:
    """An instance of `model` from the given flags; a bad value names its flag."""
    try:
        return model(**given(ns, model))
    except ValidationError as e:
        problems = "; ".join("--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
                             + f": {err['msg']}" for err in e.errors())
        raise ConfigError(problems) from None
