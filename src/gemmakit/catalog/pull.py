"""`gemmakit pull REPO[:FILE]`: a checkpoint from the Hugging Face Hub into the data directory.

The hub's own client does the talking (`huggingface_hub`: the repository listing with each
file's LFS sha256, the HEAD that resolves a file's location, ETag and size, and the ranged GET),
so `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` and proxies work as they do for every hub tool.
gemmakit keeps its own partial files (`<file>.part`, next to where the file will be): the hub's
downloader deletes a partial file when a download fails, and a pull must resume where the last
one stopped. Every file is checked against the hub's hash (sha256 for LFS files, the git blob
sha1 for small ones) before it is moved into place; a file that fails is deleted, not stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from gemmakit.catalog import pulled
from gemmakit.catalog.bundled import BUNDLED_ALIAS
from gemmakit.errors import ConfigError

# The files of a Hugging Face checkpoint folder that the transformers engine reads.
_HF_SUFFIXES = (".json", ".safetensors", ".model", ".jinja", ".txt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Naming:
    name: str
    catalog_id: str | None
    quantization: str | None  # the catalog's quantization label, when it names one


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`owner/name[:path/in/repo]` -> (repo, file or None)."""
    repo, _, file = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"'{spec}' is not REPO[:FILE] (a repository is owner/name, such as "
                          "google/gemma-3-1b-it-qat-q4_0-gguf)")
    return repo, file or None


def _gguf_type_in(stem: str) -> str | None:
    """The llama.cpp file type a GGUF's name carries (gemma-3-27b-it-Q4_K_M -> Q4_K_M)."""
    try:
        from gguf import LlamaFileType
    except ImportError:  # pragma: no cover - a core dependency
        return None
    names = sorted((t.name.removeprefix("MOSTLY_") for t in LlamaFileType), key=len, reverse=True)
    upper = stem.upper()
    for n in names:
        if re.search(rf"(^|[-_.]){re.escape(n)}($|[-_.])", upper):
            return n
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"


def naming(repo: str, file: str | None, fmt: str) -> Naming:
    """The name a pull is stored under: for a published checkpoint the catalog's model id, with
    `-it` for instruction-tuned weights and the quantization for a GGUF
    (google/gemma-3-1b-it-qat-q4_0-gguf -> gemma-3-1b-it-qat-q4_0); a second checkpoint of the
    model that would get the same name takes its repository's name instead, and one that would
    take the bundled model's name gets its format appended. Outside the catalog, a name derived
    from the file (or, for a folder, the repository's name)."""
    from gemmakit.catalog.data import load_catalog

    for m in load_catalog().models:
        earlier: set[str] = set()
        for c in m.checkpoints:
            base = _catalog_name(m.id, c.tuning, c.quantization, c.format,
                                 c.file or (file if c.repo.lower() == repo.lower() else None))
            if c.repo.lower() != repo.lower() or (c.file and file and c.file != file):
                earlier.add(base)
                continue
            name = base
            if name in earlier:
                name = _slug(repo.split("/")[1])
            if name == BUNDLED_ALIAS:
                name = f"{name}-{c.format}"
            return Naming(name, m.id, c.quantization)
    stem = PurePosixPath(file).stem if file and fmt == "gguf" else repo.split("/")[1]
    return Naming(_slug(stem), None, None)


def _catalog_name(model_id: str, tuning: str, quantization: str | None, fmt: str,
                  file: str | None) -> str:
    parts = [model_id]
    if tuning == "instruction" and not model_id.endswith("-it"):
        parts.append("it")
    if fmt == "gguf":
        quant = quantization or (_gguf_type_in(PurePosixPath(file).stem) if file else None)
        if quant:
            parts.append(quant.lower().replace("qat_", "qat-"))
    return "-".join(parts)


def _choose_files(repo: str, file: str | None, names: list[str]) -> tuple[str, list[str]]:
    """(format, files to fetch) from the repository's file list."""
    if file is not None:
        if file not in names:
            ggufs = [n for n in names if n.endswith(".gguf")]
            hint = f" (its GGUF files: {', '.join(ggufs)})" if ggufs else ""
            raise ConfigError(f"{repo} has no file '{file}'{hint}")
        if not file.lower().endswith(".gguf"):
            raise ConfigError(f"'{file}' is not a GGUF file; pull a Hugging Face checkpoint "
                              f"folder without :FILE (gemmakit pull {repo})")
        return "gguf", [file]
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        return "gguf", ggufs
    if ggufs:
        raise ConfigError(f"{repo} holds several GGUF files; name one as {repo}:FILE — "
                          + ", ".join(ggufs))
    if "config.json" in names and any(n.endswith(".safetensors") for n in names):
        return "hf", [n for n in names if "/" not in n and n.endswith(_HF_SUFFIXES)]
    raise ConfigError(f"{repo} holds neither a GGUF file nor a safetensors checkpoint with "
                      "config.json: gemmakit cannot serve it")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("gemmakit pull needs huggingface_hub: pip install 'gemmakit[hub]'"
                          ) from None
    return huggingface_hub


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection-level errors of whichever HTTP library this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(mod).TransportError)
    return tuple(errors)


@contextlib.contextmanager
def _hub_errors(repo: str, doing: str) -> Iterator[None]:
    """The hub client's exceptions as one clear sentence each (no traceback)."""
    _hub()
    from huggingface_hub import constants
    from huggingface_hub import errors as e

    where = constants.ENDPOINT
    try:
        yield
    except e.OfflineModeIsEnabled:
        raise ConfigError("HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached; "
                          "unset it to pull") from None
    except e.GatedRepoError:
        raise ConfigError(f"{repo} is gated: accept its licence at {where}/{repo} and set "
                          "HF_TOKEN (or run `hf auth login`)") from None
    except e.RepositoryNotFoundError:
        raise ConfigError(f"no model repository {repo} on {where} (a private one needs "
                          "HF_TOKEN)") from None
    except e.RevisionNotFoundError as err:
        raise ConfigError(f"{repo} has no such revision ({_first_line(err)})") from None
    except e.RemoteEntryNotFoundError as err:
        raise ConfigError(f"{repo}: file not found ({_first_line(err)})") from None
    except e.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise ConfigError(f"the hub at {where} answered HTTP {status} while {doing} {repo}: "
                          f"{_first_line(err)}") from None
    except _transport_errors() as err:
        raise ConfigError(f"the Hugging Face Hub cannot be reached at {where} "
                          f"({type(err).__name__}: {_first_line(err) or 'no answer'}) while "
                          f"{doing} {repo}; check the network, a proxy or HF_ENDPOINT") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else ""


def pull(spec: str, models_dir: Path, *, revision: str = "main", name: str | None = None,
         log: Callable[[str], None] | None = None) -> pulled.Pulled:
    """Download `spec` (REPO[:FILE]) into `models_dir/pulled/<name>/`, resuming a partial pull
    and checking every file's hash; the stored pull (already there and current: untouched)."""
    say = log or (lambda msg: print(f"gemmakit: {msg}", file=sys.stderr))
    repo, file = parse_spec(spec)
    _hub()
    from huggingface_hub import HfApi

    with _hub_errors(repo, "listing"):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha
    if not commit:
        raise ConfigError(f"the hub gave no commit for {repo}@{revision}")
    siblings = {s.rfilename: s for s in info.siblings or ()}
    fmt, files = _choose_files(repo, file, sorted(siblings))
    n = naming(repo, files[0] if fmt == "gguf" else None, fmt)
    final_name = pulled.check_name(name or n.name)
    if final_name == BUNDLED_ALIAS:
        raise ConfigError(f"'{BUNDLED_ALIAS}' is the bundled model's name; pull under another "
                          "with --name")
    folder = pulled.pulled_dir(models_dir) / final_name
    existing = pulled.read(folder) if folder.is_dir() else None
    if existing is not None:
        same = existing.repo == repo and [f["path"] for f in existing.files] == files
        if not same:
            raise ConfigError(f"a pulled model named '{final_name}' already exists (from "
                              f"{existing.repo}); gemmakit rm {final_name} first, or pull with "
                              "--name")
        if existing.revision == commit:
            say(f"{final_name} is up to date ({repo}@{commit[:12]})")
            return existing
    folder.mkdir(parents=True, exist_ok=True)
    checked = [_fetch(repo, commit, siblings[f], folder, say) for f in files]
    quant = n.quantization
    if fmt == "gguf":
        quant = _gguf_file_type(folder / files[0]) or quant
    p = pulled.Pulled(final_name, folder, repo, commit, fmt, tuple(checked), n.catalog_id, quant)
    pulled.write(p)
    return p


def _gguf_file_type(path: Path) -> str | None:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            path.unlink()
            raise ConfigError(f"{path.name} is not a GGUF file (no GGUF magic): not stored")
    with contextlib.suppress(Exception):  # a type is a courtesy; llama.cpp judges the file
        from gemmakit.catalog.gguf_file import read_gguf
        from gemmakit.catalog.local import _file_type

        return _file_type(read_gguf(path))
    return None


def _fetch(repo: str, commit: str, sibling: Any, folder: Path,
           say: Callable[[str], None]) -> dict[str, Any]:
    """One file: HEAD for its location and ETag, a ranged GET onto `<file>.part` (resumed when
    the partial file belongs to the same ETag), the hash checked, then moved into place."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    filename: str = sibling.rfilename
    url = hf_hub_url(repo, filename, revision=commit)
    with _hub_errors(repo, f"resolving {filename} in"):
        meta = get_hf_file_metadata(url)
    etag = meta.etag or ""
    lfs = getattr(sibling, "lfs", None)
    sha256 = lfs.sha256 if lfs is not None else (etag if _SHA256.match(etag) else None)
    if sha256 and _SHA256.match(etag) and etag != sha256:
        raise ConfigError(f"the hub disagrees with itself about {filename}: the listing says "
                          f"sha256 {sha256}, the file's ETag {etag}")
    git_sha1 = None if sha256 else (getattr(sibling, "blob_id", None) or etag or None)
    if not sha256 and not git_sha1:
        raise ConfigError(f"the hub gives no hash for {filename}: it cannot be checked, so it "
                          "is not pulled")
    size = meta.size if meta.size is not None else getattr(sibling, "size", None)
    dest = folder / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"path": filename, "size": size}
    record.update({"sha256": sha256} if sha256 else {"git_sha1": git_sha1})
    if dest.is_file() and _matches(dest, sha256, git_sha1):
        return record  # unchanged since an earlier pull
    part = dest.with_name(dest.name + ".part")
    part_meta = dest.with_name(dest.name + ".part.json")
    resume = 0
    if part.is_file():
        try:
            same = json.loads(part_meta.read_text()).get("etag") == etag
        except (OSError, ValueError):
            same = False
        resume = part.stat().st_size if same and (size is None or part.stat().st_size <= size) else 0
        if resume:
            say(f"resuming {filename} at {resume / 1e6:.1f} MB")
        else:
            part.unlink()
    part_meta.write_text(json.dumps({"etag": etag, "size": size}))
    # The hub redirects large files to a CDN: the token stays with the hub (as hf_hub_download
    # does), the CDN's signed URL needs none.
    same_host = urlparse(url)[:2] == urlparse(meta.location)[:2]
    headers = build_hf_headers(token=None if same_host else False)
    with _hub_errors(repo, f"downloading {filename} from"), part.open("ab") as out:
        http_get(meta.location, out, resume_size=resume, headers=headers, expected_size=size,
                 displayed_filename=filename)
    if not _matches(part, sha256, git_sha1):
        got = _sha256(part) if sha256 else _git_sha1(part)
        part.unlink()
        part_meta.unlink(missing_ok=True)
        kind, want = ("sha256", sha256) if sha256 else ("git blob sha1", git_sha1)
        raise ConfigError(f"{filename} failed its {kind} check (the hub says {want}, the "
                          f"download is {got}): deleted, not stored; pull again")
    os.replace(part, dest)
    part_meta.unlink(missing_ok=True)
    return record


def _matches(path: Path, sha256: str | None, git_sha1: str | None) -> bool:
    if sha256:
        return _sha256(path) == sha256
    if git_sha1:
        return _git_sha1(path) == git_sha1
    return False  # nothing to check against: refuse rather than trust


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _git_sha1(path: Path) -> str:
    """Git's blob id: sha1 over "blob <size>\\0" and the content (what the hub lists for files
    not stored in LFS)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    h.update(path.read_bytes())
    return h.hexdigest()
