"""One typed settings object for the server and the CLI.

Precedence: command-line flags > `--config` TOML file > `GEMMAKIT_*` environment > defaults.
Each field's docstring is its `--help` text: the CLI flags are generated from this class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gemmakit.errors import ConfigError, GemmakitError
from gemmakit.monitoring.config import MonitoringSettings
from gemmakit.safety.config import PolicyConfig


def default_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "gemmakit"


RoleName = Literal["system", "developer", "user", "assistant", "tool"]
ContentType = Literal["text", "image_url", "input_audio"]


class UpstreamConfig(BaseModel):
    """One upstream of `--engine remote` (TOML: an `[[upstreams]]` table)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str = Field(pattern=r"^https?://")
    """Base URL of an OpenAI-compatible server (http://host:port, with or without /v1)."""
    key: str | None = None
    """API key sent to it (Authorization: Bearer), health checks included."""
    weight: float = Field(default=1.0, gt=0)
    """Share of traffic under --routing weighted (relative to the other upstreams')."""
    kind: Literal["auto", "gemmakit", "vllm", "llama-server"] = "auto"
    """What serves it (how constraints and token ids are asked for); auto: detected from its
    /v1/models (owned_by) or /props."""
    model: str | None = None
    """Model id to ask it for (default: the first its /v1/models lists)."""
    name: str | None = None
    """Label in metrics and /health (default: host:port)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GEMMAKIT_",
        use_attribute_docstrings=True,
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home)
    """Data directory (models, keys, usage ledger). Environment: GEMMAKIT_HOME."""

    model: str = "gemma-3-270m"
    """Model to serve: a catalog alias (gemma-3-270m) or a path to a .gguf file."""

    engine: str = "llamacpp"
    """Inference engine (see `gemmakit engines`)."""

    served_model_name: str | None = None
    """Name the API reports and accepts for the model (default: the alias or the file's stem)."""

    host: str = "127.0.0.1"
    """Address to listen on."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    context_length: int | None = Field(default=None, ge=16)
    """Context window of each sequence in tokens (default: the model's trained context, at
    most 8192)."""

    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    """CPU threads for decoding and prompt processing (default: all cores)."""

    batch_size: int = Field(default=512, ge=1)
    """Prompt tokens evaluated per step (llama.cpp n_batch)."""

    parallel: int = Field(default=16, ge=1, le=64)
    """Sequences decoded together in one batch (continuous batching); each has its own
    context_length of KV cache (llama.cpp: sliding-window layers hold only their window)."""

    max_queue: int = Field(default=64, ge=0)
    """Requests that may wait for a free sequence; beyond that, 429 with Retry-After at once."""

    prefill_chunk: int = Field(default=128, ge=1)
    """Most prompt tokens prefilled per step while other sequences are decoding (bounds their
    stall; a lone request prefills batch_size tokens per step)."""

    prompt_lookup: int = Field(default=0, ge=0, le=16)
    """Prompt-lookup (n-gram) speculative decoding on the llama.cpp engine: while one sequence
    decodes alone, greedily, draft up to this many tokens by finding its last tokens earlier in
    its prompt and reply, and verify them in one pass (0: off). Output is unchanged; it helps
    replies that copy from their prompt (quotes, edits, JSON rewrites)."""

    prefix_cache: bool = True
    """Reuse the KV cache of a finished request's prompt prefix (multi-turn chats, shared
    system prompts) instead of recomputing it."""

    swa_full: bool = False
    """llama.cpp: sliding-window layers keep the whole context, not just their window plus one
    micro-batch (about 4x the KV cache per sequence for the 270M at 8192 tokens), so a cached
    prefix stays reusable however far its sequence went past it (default: off; a next turn is
    reused either way)."""

    fit: str | None = None
    """Memory budget (8GB, 512MiB): pick --context-length and --parallel that fit it, planned
    from the model file before loading (the plan is printed; values you set stay fixed)."""

    models: list[str] = Field(default_factory=list)
    """More models served by the same server, each MODEL or NAME=MODEL (`gemmakit serve`
    takes them as further --model flags; TOML: models = [...])."""

    max_loaded_models: int | None = Field(default=None, ge=1)
    """Most models loaded at once (default: no limit); loading another unloads the least
    recently used idle one."""

    keep_alive: str | None = None
    """How long a model stays loaded after its last request, as Ollama takes it: 5m, 30s, 1h,
    a number of seconds, 0 (unload right after each request), negative (for ever: the default).
    A request's own keep_alive field overrides it."""

    max_memory: str | None = None
    """Memory budget (8GB, 512MiB) for the loaded models together, by the catalog's estimate of
    each; loading another unloads the least recently used idle ones (default: no budget)."""

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            from gemmakit.server.models_registry import parse_duration

            parse_duration(v)  # a ValueError names the problem
        return v

    @field_validator("max_memory")
    @classmethod
    def _memory_size(cls, v: str | None) -> str | None:
        if v is not None:
            from gemmakit.catalog.fit import parse_bytes

            try:
                parse_bytes(v)
            except GemmakitError as e:
                raise ValueError(e.message) from None
        return v

    # --- the remote engine: a gateway over upstreams (docs/scale.md) --------------------------
    upstream: list[str] = Field(default_factory=list)
    """--engine remote: an upstream's base URL (repeat the flag for each): an OpenAI-compatible
    gemmakit, vLLM or llama-server. TOML [[upstreams]] tables (url, key, weight, kind, model,
    name) add upstreams with their own key and weight."""

    upstream_key: list[str] = Field(default_factory=list)
    """API key for the --upstream servers: one for all, or one per --upstream in order."""

    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    """The config file's [[upstreams]] tables (no flag)."""

    routing: Literal["least-outstanding", "prefix", "weighted"] = "least-outstanding"
    """How the remote engine picks an upstream: least-outstanding (power of two choices),
    prefix (the same prompt prefix to the same upstream, for its prefix cache, within
    --prefix-imbalance) or weighted (smooth weighted round robin)."""

    prefix_tokens: int = Field(default=64, ge=1)
    """--routing prefix: leading prompt tokens hashed to place a prefix not routed before (a
    prompt whose prefix was routed goes where that prefix went)."""

    prefix_imbalance: int = Field(default=4, ge=0)
    """--routing prefix: requests the chosen upstream may have in flight beyond the least
    loaded one's before the request goes to the least loaded one instead."""

    upstream_connect_timeout: float = Field(default=2.0, gt=0)
    """Seconds to connect to an upstream."""

    upstream_first_byte_timeout: float = Field(default=30.0, gt=0)
    """Seconds from sending a request to an upstream's first streamed event (its prefill)."""

    upstream_idle_timeout: float = Field(default=15.0, gt=0)
    """Seconds an upstream stream may go without an event before it is cut."""

    upstream_retries: int = Field(default=2, ge=0)
    """Retries of a request on other upstreams (connection errors, 429, 5xx, timeouts; only
    before anything was sent to the client)."""

    upstream_health_interval: float = Field(default=2.0, gt=0)
    """Seconds between active health checks of each upstream."""

    upstream_failures: int = Field(default=3, ge=1)
    """Consecutive failures (requests or health checks) that eject an upstream."""

    upstream_cooldown: float = Field(default=5.0, gt=0)
    """Seconds an ejected upstream waits before one trial request (half-open)."""

    # --- the vllm engine: vLLM's own scale knobs, passed through (docs/scale.md) --------------
    tensor_parallel_size: int = Field(default=1, ge=1)
    """--engine vllm: GPUs each layer is split across (vLLM tensor parallelism)."""

    pipeline_parallel_size: int = Field(default=1, ge=1)
    """--engine vllm: stages the layers are split into, one GPU group each (vLLM pipeline
    parallelism; across nodes with --distributed-executor-backend ray)."""

    distributed_executor_backend: Literal["ray", "mp"] | None = None
    """--engine vllm: how vLLM runs its workers: mp (processes on this node) or ray (a Ray
    cluster, for several nodes); default: vLLM's choice."""

    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """--engine vllm: share of each GPU's memory vLLM may take (weights and KV cache)."""

    max_num_seqs: int | None = Field(default=None, ge=1)
    """--engine vllm: most sequences vLLM schedules at once (default: --parallel)."""

    shutdown_timeout: float = Field(default=30.0, ge=0)
    """Seconds in-flight requests may take to finish after SIGTERM/SIGINT before they are ended
    with finish_reason "shutdown"."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest accepted request body in bytes (larger bodies get 413)."""

    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    """Readiness probe, alert rules and webhook (TOML section [monitoring])."""

    # --- security: keys, limits, validation, policy, privacy (docs/security.md) -------------
    auth: bool = False
    """Require an API key (`gemmakit keys create`) on every /v1/* and admin route."""

    metrics_auth: bool = False
    """With --auth, require a key on /metrics too (public by default, for scrapers)."""

    ratelimit_store: str = "memory"
    """Where per-key rate-limit windows live: memory (this process) or redis://HOST:PORT/DB
    (shared by every replica using the same Redis)."""

    store: str | None = None
    """Where API keys and the usage ledger live: the SQLite file in the data directory (the
    default), sqlite:///PATH, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (shared by every
    replica naming it; the postgres extra). Applies its migrations when opened."""

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        from gemmakit.safety.store import check_url

        try:
            return check_url(v)
        except GemmakitError as e:
            raise ValueError(e.message) from None

    usage_ledger: bool = True
    """Record every API request (key, model, tokens, status, latency; never content) in the
    usage ledger under the data directory."""

    log_content: bool = False
    """Log prompt and completion text (debugging only: the logs then hold private data)."""

    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest accepted total size of the request headers in bytes (larger gets 431)."""

    max_messages: int = Field(default=512, ge=1)
    """Most messages in a chat request (or prompts in a completion request)."""

    max_message_chars: int = Field(default=400_000, ge=1)
    """Most characters of text in one message (or one prompt)."""

    max_total_chars: int = Field(default=2_000_000, ge=1)
    """Most characters of text in a whole request."""

    max_content_parts: int = Field(default=64, ge=1)
    """Most content parts in one message."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest image (decoded, or fetched with --allow-remote-media) in bytes."""

    max_audio_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    """Largest audio clip (decoded) in bytes."""

    allowed_roles: list[RoleName] = Field(default_factory=lambda: list(get_args(RoleName)))
    """Message roles the server accepts (repeat the flag for each)."""

    allowed_content_types: list[ContentType] = Field(
        default_factory=lambda: list(get_args(ContentType)))
    """Content part types the server accepts (repeat the flag for each)."""

    allow_remote_media: bool = False
    """Fetch http(s) image URLs named in requests (off: data: URLs only, which prevents SSRF)."""

    remote_media_private: bool = False
    """With --allow-remote-media, also fetch from loopback, private and link-local addresses."""

    media_dir: Path | None = None
    """Directory file:// media URLs may be read from (off: file URLs are refused)."""

    model_dirs: list[Path] = Field(default_factory=list)
    """Directories --model paths must lie in, after symlinks and '..' are resolved (repeat the
    flag; none: any path the operator names)."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """Content policy: the [policy] section of the config file (docs/security.md)."""

    @model_validator(mode="after")
    def _model_in_allowed_dirs(self) -> Settings:
        # Checked before anything loads: a symlink or '..' cannot lead --model out of model_dirs.
        if self.model_dirs:
            self.model = self._confined(self.model, "model")
            self.models = [self._confined(m, "models") for m in self.models]
        return self

    def _confined(self, spec: str, field: str) -> str:
        from gemmakit.compose import split_model

        name, model = split_model(spec)  # NAME=MODEL: the path is MODEL
        if not (Path(model).suffix or "/" in model):
            return spec
        from gemmakit.safety.paths import confine

        try:
            path = str(confine(model, self.model_dirs))
        except GemmakitError as e:
            raise ValueError(f"{field}: {e.message}") from None
        return path if name is None else f"{name}={path}"

    # --- media and the transformers engine (docs/transformers.md) ------------------------
    profile: Literal["max-efficiency", "balanced", "performance", "edge"] | None = None
    """Loading profile: max-efficiency (smallest weights), balanced, performance, or edge (the
    smallest footprint: context 2048 and one sequence unless given, and each engine's
    small-memory settings); mapped per engine and device, impossible combinations refused
    (docs/transformers.md, docs/models.md)."""

    @model_validator(mode="after")
    def _profile_runtime(self) -> Settings:
        # A profile's context and sequences apply where the operator set none.
        from gemmakit.profiles import runtime_defaults

        for key, value in runtime_defaults(self.profile).items():
            if key not in self.model_fields_set:
                setattr(self, key, value)
        return self

    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Most pixels (width x height) in an image; larger ones (decompression bombs) are refused."""

    max_images: int = Field(default=8, ge=0)
    """Most images in one request."""

    max_audio_seconds: float = Field(default=30.0, gt=0)
    """Longest audio clip accepted, in seconds (Gemma 3n reads at most 30 s per clip)."""

    max_audio_clips: int = Field(default=4, ge=0)
    """Most audio clips in one request."""

    max_transcript_tokens: int = Field(default=448, ge=1)
    """Most tokens a transcription or translation may generate (Whisper's decoder limit)."""

    pan_and_scan: bool = False
    """Gemma 3 images: also feed crops of non-square images (more image tokens, finer detail)."""

    tool_parser: Literal["json", "pythonic", "function_call"] = "json"
    """Call syntax parsed from replies when tool_choice is auto: json (what gemmakit's Gemma
    prompt asks for), pythonic ([f(a=1)], in or out of a tool_code fence) or function_call
    (FUNCTION_CALL: f(a=1) lines). Forced calls always use json (the grammar writes it)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: flags (passed as init kwargs) > TOML file > environment > defaults.
        return (init_settings, TomlConfigSettingsSource(settings_cls), env_settings)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **flags: Any) -> Settings:
        """Build settings from flags (None means "not given"), a TOML file and the environment."""
        klass: type[Settings] = cls
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            klass = type(cls.__name__, (cls,),
                         {"model_config": {**cls.model_config, "toml_file": path},
                          "__module__": cls.__module__})
        try:
            return klass(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in e.errors())
            raise ConfigError(f"invalid settings: {problems}") from None
        except ValueError as e:  # a malformed TOML file
            raise ConfigError(f"invalid config file: {e}") from None

    @property
    def models_dir(self) -> Path:
        return self.home / "models"
