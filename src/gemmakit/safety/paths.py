"""Keeping file access inside allowed directories: a path is resolved (every symlink followed,
every `..` collapsed) *before* it is compared with the allowed roots, so neither can escape."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gemmakit.errors import InvalidRequestError


class PathNotAllowedError(InvalidRequestError):
    code = "path_not_allowed"


def confine(path: str | Path, roots: Sequence[str | Path], *, param: str | None = None) -> Path:
    """The resolved path if it lies inside one of `roots` (themselves resolved); else an error
    that names neither the path's target nor the roots."""
    try:
        real = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise PathNotAllowedError("the file does not exist or is not readable.",
                                  param=param) from None
    for root in roots:
        try:
            base = Path(root).expanduser().resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real == base or real.is_relative_to(base):
            return real
    raise PathNotAllowedError("the path is outside the directories this server may read.",
                              param=param)
