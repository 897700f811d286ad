"""The composition root: settings -> model reference -> engine -> service -> pipeline, written once
and used by every caller (the server, `gemmakit chat`/`complete`, the evaluations, the tool runner
and the Python API), so the profile check, the tool parser and --served-model-name hold for all.

    plan = compose.plan(settings)          # resolve the model, check the profile (fast)
    engine = plan.load_engine()            # blocking: seconds
    pipeline = plan.pipeline(engine)       # the request pipeline every request goes through

`load(settings)` does all three for in-process callers; close the pipeline to free the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemmakit.errors import ConfigError

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.engines.base import Engine
    from gemmakit.pipeline import Pipeline, Sink
    from gemmakit.safety.layer import Safety
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit")


@dataclass(frozen=True)
class LoadPlan:
    """What will be served, decided before anything loads."""

    settings: Settings
    model: ModelRef
    engine_class: type[Engine]
    profile: str | None
    """The loading profile's plan on this engine (a one-line summary), if one was asked for."""

    @property
    def served_name(self) -> str:
        return self.settings.served_model_name or self.model.name

    def load_engine(self) -> Engine:
        """Load the engine (blocking; may take seconds)."""
        return self.engine_class.from_settings(self.model, self.settings)

    def memory_bytes(self) -> int | None:
        """The catalog's estimate of this model's memory once loaded, at its context and
        --parallel (catalog/fit.py); None where no estimate can be made (an engine or a file
        the catalog does not describe)."""
        from gemmakit.catalog.fit import DEFAULT_CONTEXT_CAP, plan_fit, profile_quantization
        from gemmakit.catalog.local import gguf_local, hf_local

        s, ref = self.settings, self.model
        try:
            if s.context_length is not None:
                context = s.context_length
            else:
                lm = gguf_local(ref.path, ref.name) if ref.format == "gguf" else \
                    hf_local(ref.path, name=ref.name)
                context = min(lm.trained_context or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)
            p = plan_fit(ref.path, 1 << 62, engine=s.engine, model_format=ref.format,
                         context_length=context, parallel=s.parallel, batch_size=s.batch_size,
                         name=ref.name, quantization=profile_quantization(s.profile, "cpu"),
                         swa_full=s.swa_full)
        except Exception as e:  # the estimate is advice: a model it cannot describe still loads
            log.info("%s: no memory estimate (%s: %s)", self.served_name, type(e).__name__, e)
            return None
        return p.memory_bytes

    def pipeline(self, engine: Engine, *, safety: Safety | None = None,
                 sinks: Sequence[Sink] = ()) -> Pipeline:
        return build_pipeline(engine, self.served_name, self.settings, safety=safety,
                              sinks=sinks)


def plan(settings: Settings, *, progress: bool = True) -> LoadPlan:
    """Resolve `settings.model` (assembling the bundled model on first use), plan the context
    and parallel sequences for `--fit`, and check that the engine can serve the model under the
    requested profile: an impossible pair fails here, before a model loads, never as a 503
    later. The plan's `settings` are the ones to load with."""
    from gemmakit.catalog import resolve
    from gemmakit.engines import engine_class

    name, spec = split_model(settings.model)
    if name is not None:
        if settings.served_model_name is not None and settings.served_model_name != name:
            raise ConfigError(f"--model {settings.model} names the model '{name}' and "
                              f"--served-model-name says '{settings.served_model_name}': "
                              "give the name once")
        settings = settings.model_copy(update={"model": spec, "served_model_name": name})
    cls = engine_class(settings.engine)
    if settings.prompt_lookup and cls.name != "llamacpp":
        raise ConfigError(f"--prompt-lookup is an option of the llamacpp engine; the "
                          f"{cls.name} engine has no prompt-lookup decoding")
    ref = resolve(spec, settings.models_dir, progress=progress)
    if settings.fit is not None:
        settings = fit(settings, ref)
    summary = cls.plan_profile(ref, settings.profile) if settings.profile is not None else None
    if summary is not None:
        log.info("profile: %s", summary)
    return LoadPlan(settings, ref, cls, summary)


def split_model(spec: str) -> tuple[str | None, str]:
    """`--model NAME=MODEL` -> (NAME, MODEL); `MODEL` -> (None, MODEL). NAME is the id the API
    serves the model as; it has no '/' (so a path such as ./a=b.gguf stays a path)."""
    name, sep, model = spec.partition("=")
    if sep and name and model and "/" not in name and "\\" not in name:
        return name, model
    return None, spec


def plan_all(settings: Settings, *, progress: bool = True) -> list[LoadPlan]:
    """One plan per served model: `settings.model`, then `settings.models` (`gemmakit serve
    --model A --model B`), each planned alone (its own --fit plan too). Two models may not be
    served under one name."""
    specs = [settings.model, *settings.models]
    if len(specs) > 1 and settings.served_model_name is not None:
        raise ConfigError("--served-model-name names one model; with several, name each with "
                          "--model NAME=MODEL")
    plans = [plan(settings.model_copy(update={"model": s, "models": []}), progress=progress)
             for s in specs]
    names = [p.served_name for p in plans]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two models would be served as '{n}'; name them apart with "
                              "--model NAME=MODEL")
    return plans


def fit(settings: Settings, ref: ModelRef) -> Settings:
    """`--fit`: the settings with the context length and parallel sequences that fit the memory
    budget (catalog/fit.py), the plan printed before anything loads."""
    import sys

    from gemmakit.catalog.fit import parse_bytes, plan_fit, profile_quantization

    assert settings.fit is not None
    given = settings.model_fields_set
    p = plan_fit(ref.path, parse_bytes(settings.fit), engine=settings.engine,
                 model_format=ref.format,
                 context_length=settings.context_length if "context_length" in given else None,
                 parallel=settings.parallel if "parallel" in given else None,
                 preferred_parallel=settings.parallel, batch_size=settings.batch_size,
                 name=ref.name, device="cpu",
                 quantization=profile_quantization(settings.profile, "cpu"),
                 swa_full=settings.swa_full)
    print(f"gemmakit: {p.summary()}", file=sys.stderr)
    return settings.model_copy(update={"context_length": p.context_length,
                                       "parallel": p.parallel})


def build_pipeline(engine: Engine, model_name: str, settings: Settings | None = None, *,
                   safety: Safety | None = None, sinks: Sequence[Sink] = ()) -> Pipeline:
    """The service and pipeline over a loaded engine. Without `safety`, the in-process one: the
    request limits and content policy of `settings` (default: environment and defaults), no
    keys, limits or ledger."""
    from gemmakit.pipeline import Pipeline
    from gemmakit.safety.layer import Safety
    from gemmakit.service import Service
    from gemmakit.settings import Settings

    settings = settings if settings is not None else Settings.load()
    check_chat_template(engine, model_name)

    service = Service(engine, model_name, tool_parser=settings.tool_parser)
    return Pipeline(service, safety or Safety.from_settings(settings, server=False), sinks)


def check_chat_template(engine: Engine, model_name: str) -> int | None:
    """Render the model file's own chat template (sandboxed) against gemmakit's renderer and say
    in the log whether they agree; the number of sample conversations they render differently
    (None when the file carries no template). gemmakit always serves its own rendering."""
    template = engine.chat_template
    if not template:
        return None
    from gemmakit.prompts.template import check_template

    differences = check_template(template)
    if not differences:
        log.info("%s: the model file's chat template agrees with gemmakit's Gemma renderer",
                 model_name)
        return 0
    first = differences[0]
    log.warning("%s: the model file's chat template renders %d of the sample conversations "
                "differently from gemmakit's Gemma renderer (gemmakit serves its own); first "
                "difference, conversation %d: ours %r, the file's %r", model_name,
                len(differences), first.conversation, first.ours[:200], first.theirs[:200])
    return len(differences)


def load(settings: Settings, *, progress: bool = True) -> Pipeline:
    """Plan, load and wrap in a pipeline (blocking): what in-process callers use."""
    p = plan(settings, progress=progress)
    return p.pipeline(p.load_engine())
