"""A GGUF file's tensor table (name, shape, type), read without its values.

The gguf package's reader parses every metadata array into Python objects (about 12 s for a
Gemma file: the 262k-entry vocabulary, three times); sizing a model only needs the tensor infos
that follow the metadata, so the metadata is skipped by length here, in well under a second.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gemmakit.errors import ConfigError

# GGUF metadata value types -> byte size of a scalar (8 = string, 9 = array: variable).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]
    type_name: str

    @property
    def n_bytes(self) -> int:
        from gemmakit.catalog.weights import type_size

        block, size = type_size(self.type_name)
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


def _u32(f: BinaryIO) -> int:
    return struct.unpack("<I", f.read(4))[0]


def _u64(f: BinaryIO) -> int:
    return struct.unpack("<Q", f.read(8))[0]


def _string(f: BinaryIO) -> str:
    return f.read(_u64(f)).decode("utf-8", "replace")


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _SCALAR:
        f.seek(_SCALAR[vtype], 1)
    elif vtype == _STRING:
        f.seek(_u64(f), 1)
    elif vtype == _ARRAY:
        etype, n = _u32(f), _u64(f)
        if etype in _SCALAR:
            f.seek(_SCALAR[etype] * n, 1)
        else:
            for _ in range(n):
                _skip_value(f, etype)
    else:
        raise ConfigError(f"not a GGUF file I can read (metadata type {vtype})")


_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GgufFile:
    metadata: dict[str, int | float | bool | str]
    """Scalar and string metadata; arrays (the vocabulary) are skipped, their lengths kept
    under `<key>.length`."""
    tensors: list[GgufTensor]

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def read_tensors(path: str | Path) -> list[GgufTensor]:
    """The tensor table of a GGUF file (v2/v3)."""
    return read_gguf(path).tensors


def read_gguf(path: str | Path) -> GgufFile:
    """The scalar metadata and the tensor table of a GGUF file (v2/v3)."""
    from gguf.constants import GGMLQuantizationType

    meta: dict[str, int | float | bool | str] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"{Path(path).name} is not a GGUF file")
        version = _u32(f)
        if version < 2:
            raise ConfigError(f"GGUF version {version} is too old")
        n_tensors, n_kv = _u64(f), _u64(f)
        for _ in range(n_kv):
            key = _string(f)
            vtype = _u32(f)
            if vtype in _FORMATS:
                fmt = _FORMATS[vtype]
                meta[key] = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            elif vtype == _STRING:
                meta[key] = _string(f)
            elif vtype == _ARRAY:
                pos = f.tell()
                _u32(f)
                meta[f"{key}.length"] = _u64(f)
                f.seek(pos)
                _skip_value(f, vtype)
            else:
                _skip_value(f, vtype)
        out = []
        for _ in range(n_tensors):
            name = _string(f)
            dims = tuple(_u64(f) for _ in range(_u32(f)))
            ttype = GGMLQuantizationType(_u32(f)).name
            _u64(f)  # offset in the data section
            out.append(GgufTensor(name, dims, ttype))
    return GgufFile(meta, out)
