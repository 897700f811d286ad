"""Names `gemmakit pull` stores a checkpoint under (catalog/pull.py: naming, parse_spec)."""

from __future__ import annotations

import pytest

from gemmakit.catalog.pull import naming, parse_spec
from gemmakit.errors import ConfigError


@pytest.mark.parametrize(("repo", "file", "fmt", "name", "catalog_id"), [
    ("google/gemma-3-1b-it-qat-q4_0-gguf", "gemma-3-1b-it-q4_0.gguf", "gguf",
     "gemma-3-1b-it-qat-q4_0", "gemma-3-1b"),
    ("Google/Gemma-3-1B-IT-QAT-Q4_0-GGUF", "gemma-3-1b-it-q4_0.gguf", "gguf",
     "gemma-3-1b-it-qat-q4_0", "gemma-3-1b"),
    # the catalog gives no quantization for this repository: the file's name does
    ("ggml-org/gemma-3-27b-it-GGUF", "gemma-3-27b-it-Q4_K_M.gguf", "gguf",
     "gemma-3-27b-it-q4_k_m", "gemma-3-27b"),
    # the bundled model has the bare name; the safetensors base checkpoint gets its format
    ("google/gemma-3-270m", None, "hf", "gemma-3-270m-safetensors", "gemma-3-270m"),
    ("google/gemma-3-4b-it", None, "hf", "gemma-3-4b-it", "gemma-3-4b"),
    # a second instruction-tuned safetensors checkpoint of the 4B: its repository's name
    ("google/gemma-3-4b-it-qat-q4_0-unquantized", None, "hf",
     "gemma-3-4b-it-qat-q4_0-unquantized", "gemma-3-4b"),
    ("google/gemma-3-270m-it", None, "hf", "gemma-3-270m-it", "gemma-3-270m"),
    ("google/gemma-3n-E2B-it", None, "hf", "gemma-3n-e2b-it", "gemma-3n-e2b"),
    # not in the catalog: derived from the file, or the repository for a folder
    ("someone/My Model", "Tiny Model+v2.Q8_0.gguf", "gguf", "tiny-model-v2.q8_0", None),
    ("someone/Fine-Tuned-Gemma", None, "hf", "fine-tuned-gemma", None),
])
def test_naming(repo, file, fmt, name, catalog_id):
    n = naming(repo, file, fmt)
    assert (n.name, n.catalog_id) == (name, catalog_id)


def test_a_catalog_file_that_differs_is_not_that_checkpoint():
    n = naming("google/gemma-3-1b-it-qat-q4_0-gguf", "other.gguf", "gguf")
    assert n.catalog_id is None and n.name == "other"


@pytest.mark.parametrize("spec", ["gemma", "a/b/c", "/b", "a/:x.gguf"])
def test_bad_spec(spec):
    with pytest.raises(ConfigError, match=r"REPO\[:FILE\]"):
        parse_spec(spec)


def test_spec_with_a_file_in_a_folder():
    assert parse_spec("org/repo:sub/dir/m.gguf") == ("org/repo", "sub/dir/m.gguf")
