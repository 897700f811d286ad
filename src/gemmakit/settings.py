"""One typed settings object for the server and the CLI.

Precedence: command-line flags > `--config` TOML file > `GEMMAKIT_*` environment > defaults.
Each field's docstring is its `--help` text: the CLI flags are generated from this class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gemmakit.errors import ConfigError


def default_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "gemmakit"


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
    """Context window in tokens (default: the model's trained context)."""

    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    """CPU threads for decoding and prompt processing (default: all cores)."""

    batch_size: int = Field(default=512, ge=1)
    """Prompt tokens evaluated per step (llama.cpp n_batch)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest accepted request body in bytes (larger bodies get 413)."""

    profile: Literal["max-efficiency", "balanced", "performance"] | None = None
    """Loading profile (transformers engine): max-efficiency (smallest weights), balanced or
    performance; mapped per device, impossible combinations refused (docs/transformers.md)."""

    allow_remote_media: bool = False
    """Fetch http(s) image URLs in requests (off: only data: URLs and files under --media-dir)."""

    media_dir: Path | None = None
    """Directory from which requests may reference local image files (file:// URLs)."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest encoded image accepted, in bytes."""

    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Most pixels (width x height) in an image; larger ones (decompression bombs) are refused."""

    max_images: int = Field(default=8, ge=0)
    """Most images in one request."""

    max_audio_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    """Largest encoded audio clip accepted, in bytes."""

    max_audio_seconds: float = Field(default=30.0, gt=0)
    """Longest audio clip accepted, in seconds (Gemma 3n reads at most 30 s per clip)."""

    max_audio_clips: int = Field(default=4, ge=0)
    """Most audio clips in one request."""

    max_transcript_tokens: int = Field(default=448, ge=1)
    """Most tokens a transcription or translation may generate (Whisper's decoder limit)."""

    pan_and_scan: bool = False
    """Gemma 3 images: also feed crops of non-square images (more image tokens, finer detail)."""

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
