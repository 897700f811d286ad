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
