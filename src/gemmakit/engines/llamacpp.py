"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API.

One worker thread owns the llama.cpp context (a context is not thread-safe) and runs a step loop:
each step builds one `llama_batch` from every active sequence (prompt chunks for new ones, the
last sampled token for running ones), decodes it, and samples one token per sequence that asked for
logits. Sampling runs in llama.cpp's own sampler chain (C); Python only turns token bytes into text
and hands chunks to the event loop, so it stays off the decode path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gemmakit.engines.base import Engine
from gemmakit.engines.common import (
    Pending,
    TokenText,
    finish_stats,
    generation_budget,
    scored_tokens,
)
from gemmakit.errors import (
    ConfigError,
    EngineError,
    GemmakitError,
    InvalidRequestError,
    OverloadedError,
    ServiceUnavailableError,
)
from gemmakit.profiles import PROFILES, ProfileRow, check_name
from gemmakit.types import (
    Capabilities,
    Chunk,
    ChunkStats,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.finetune.store import Adapter
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.engine.llamacpp")

MIN_PREFIX_REUSE = 32  # tokens: shorter shared prefixes are recomputed
UBATCH = 256
"""llama.cpp's micro-batch (n_ubatch; at most --batch-size, which stays n_batch). Sliding-window
layers keep only their window plus one micro-batch of cells per sequence (swa_full off: 512 +
256 for Gemma 3, rounded to 256), so a micro-batch of 256 keeps 16 full-context sequences in
less cache than 4 took with every layer holding the whole context, and halves the compute
buffer; measured no slower than 512 here (docs/batching.md, "Sixteen sequences by default")."""
SCORE_ROWS = 256
"""At most this many prompt positions (and at most the batch size) get their logits in one decode
when a prompt is scored (`prompt_logprobs`): llama.cpp keeps a float logits row of the whole
vocabulary per position (1 MB for Gemma's 262k) in an output buffer that stays allocated at its
largest size, so a scored prompt is prefilled in chunks of this many tokens (256 MB once).
Smaller chunks cost more: measured with `gemmakit bench --scoring`, see docs/batching.md."""
# Greedy decoding under a grammar that refused the best token: the next best tokens are checked
# one at a time, best first, before the grammar is run over the whole vocabulary (which costs
# about as much as the step that produced the logits).
GRAMMAR_TOP_K = 64

_llama = None


def _lib():
    """Import llama_cpp on first use (so `import gemmakit` never does)."""
    global _llama
    if _llama is None:
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the llamacpp engine needs llama-cpp-python: pip install 'gemmakit[llamacpp]'"
            ) from e
        llama_cpp.llama_log_set(_log_callback(llama_cpp), ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _llama = llama_cpp
    return _llama


_log_cb = None
_llama_log = logging.getLogger("gemmakit.llama_cpp")


def _log_callback(llama_cpp):
    """Route llama.cpp's own log lines into Python logging: its errors (ggml level 4) as
    warnings, the rest (every tensor at load, cache notes) at debug level."""
    global _log_cb

    @llama_cpp.llama_log_callback
    def cb(level: int, text: bytes, user_data) -> None:
        msg = text.decode("utf-8", "replace").rstrip()
        if msg:
            _llama_log.log(logging.WARNING if level == 4 else logging.DEBUG, "%s", msg)

    _log_cb = cb  # keep a reference: llama.cpp holds only the C pointer
    return cb


def read_gguf_metadata(path: str | Path) -> dict[str, str]:
    """A GGUF file's key/value metadata, read by llama.cpp itself (vocabulary only, no weights)."""
    ll = _lib()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ConfigError(f"not a readable GGUF model: {Path(path).name}")
    try:
        return _model_metadata(ll, model)
    finally:
        ll.llama_model_free(model)


def _model_metadata(ll, model) -> dict[str, str]:
    out = {}
    buf = ctypes.create_string_buffer(4096)
    for i in range(ll.llama_model_meta_count(model)):
        n = ll.llama_model_meta_key_by_index(model, i, buf, len(buf))
        key = buf.value.decode("utf-8", "replace") if n >= 0 else f"#{i}"
        n = ll.llama_model_meta_val_str_by_index(model, i, None, 0)
        vbuf = ctypes.create_string_buffer(max(n, 0) + 1)
        ll.llama_model_meta_val_str_by_index(model, i, vbuf, len(vbuf))
        out[key] = vbuf.value.decode("utf-8", "replace")
    return out


LOOKUP_NGRAM = (4, 2)  # prompt lookup: the longest and shortest n-grams matched


class NgramIndex:
    """Where each n-gram of a token history (n from LOOKUP_NGRAM) last occurred with a token after
    it: prompt-lookup decoding drafts what followed the latest earlier occurrence of the
    history's own last n tokens, the longest n first."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> start of its latest occurrence

    def sync(self, prompt: Sequence[int], reply: Sequence[int]) -> None:
        """Catch up with the history `prompt` + `reply` (which only ever grows), reading only
        the tokens not indexed yet."""
        have = len(self.tokens)
        new = [*prompt[have:], *reply[max(0, have - len(prompt)):]]
        longest, shortest = LOOKUP_NGRAM
        for t in new:
            self.tokens.append(t)
            end = len(self.tokens) - 1  # the n-grams ending before the new token precede it
            for n in range(shortest, longest + 1):
                if end >= n:
                    self._last[tuple(self.tokens[end - n:end])] = end - n

    def draft(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the history's last n-gram where it last occurred."""
        longest, shortest = LOOKUP_NGRAM
        toks = self.tokens
        for n in range(longest, shortest - 1, -1):
            if len(toks) <= n:
                continue
            at = self._last.get(tuple(toks[-n:]))
            if at is not None:
                return toks[at + n: at + n + k]
        return []


@dataclass
class PrefixStats:
    """Prefix reuse's counts (the worker writes, scrapes read)."""

    window_refused: int = 0  # prompts computed afresh: the sliding window they needed was gone


@dataclass
class LookupStats:
    """Prompt-lookup decoding's counts (the worker writes, scrapes read)."""

    steps: int = 0  # verification passes
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # draft tokens the model's own greedy choice confirmed


@dataclass(eq=False)
class _Sequence(Pending):
    """Per-request state owned by the worker thread (except `cancelled`, set by the event loop)."""

    slot: _Slot | None = None
    n_past: int = 0  # positions of this sequence held in the KV cache
    n_prompt_done: int = 0
    cached_prompt: int = 0  # prompt tokens reused from the slot's prefix cache
    generated: list[int] = field(default_factory=list)
    sampler: object = None  # a llama.cpp sampler chain, or None for plain greedy decoding
    grammar: object = None  # the request's grammar sampler (a constraint), outside the chain
    greedy_bias: tuple[np.ndarray, np.ndarray] | None = None  # (token ids, added logit)
    text: TokenText | None = None
    finished: bool = False
    t_start: float = 0.0
    t_first: float | None = None
    group: object = None  # shared by the sequences of one submit() call (a request's n choices)
    prompt_lp: list[TokenLogprob] | None = None  # a scored prompt's logprobs, until sent
    lookup: NgramIndex | None = None  # prompt-lookup decoding's index of its tokens

    @property
    def scoring(self) -> bool:
        return self.request.sampling.prompt_logprobs is not None

    @property
    def prefilling(self) -> bool:
        return self.n_prompt_done < len(self.request.prompt_tokens)

    def tokens_in_kv(self) -> list[int]:
        """The tokens at positions 0..n_past-1 of this sequence's KV cells."""
        return (self.request.prompt_tokens + self.generated)[: self.n_past]


@dataclass(eq=False)
class _Slot:
    """One llama.cpp sequence id. After a request ends, its KV cells stay as a prefix cache
    (`cached` lists their tokens) until another request needs the slot."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    last_used: float = 0.0
    adapter: str | None = None  # the LoRA adapter its cells were computed with


class SequenceStream:
    """The chunks of one submitted sequence, as an async iterator. Closing it (or dropping it)
    cancels the sequence: it leaves the batch within one decode step and frees its slot."""

    def __init__(self, seq: _Sequence) -> None:
        self._seq = seq

    def __aiter__(self) -> SequenceStream:
        return self

    async def __anext__(self) -> Chunk:
        seq = self._seq
        if seq.finished:
            raise StopAsyncIteration
        try:
            item = await seq.out.get()
        except BaseException:
            seq.cancelled = True
            raise
        if isinstance(item, BaseException):
            seq.finished = True
            raise item
        if item.finish_reason is not None:
            seq.finished = True
        return item

    async def aclose(self) -> None:
        self.cancel()

    @property
    def seq_id(self) -> int | None:
        """The llama.cpp sequence id this request runs in (None while it waits)."""
        slot = self._seq.slot
        return slot.seq_id if slot is not None else None

    def cancel(self) -> None:
        if not self._seq.finished:
            self._seq.cancelled = True

    def __del__(self) -> None:  # a stream nobody reads any more must not keep generating
        self.cancel()


class LlamaCppEngine(Engine):
    """GGUF through llama.cpp, with continuous batching.

    `parallel` sequences decode together in one batch, each in its own llama.cpp sequence id with
    `context_length` positions of KV cache; up to `max_queue` more requests wait. Requests join
    and leave the batch between steps; a new request's prompt is prefilled in chunks interleaved
    with the running sequences' decode steps, reusing the longest cached prefix of a free slot."""

    name = "llamacpp"

    def __init__(self, model_path: str | Path, *, context_length: int | None = None,
                 threads: int | None = None, batch_size: int = 512, parallel: int = 1,
                 max_queue: int = 64, prefill_chunk: int = 128, prefix_cache: bool = True,
                 flash_attention: bool = False, kv_cache_type: str = "f16",
                 extra_buffers: bool = True, swa_full: bool = False,
                 prompt_lookup: int = 0) -> None:
        ll = _lib()
        self._ll = ll
        self.model_path = Path(model_path)
        self.parallel = parallel
        self.max_queue = max_queue
        self.prefix_cache = prefix_cache
        self.prefill_chunk = max(1, min(prefill_chunk, batch_size))
        self.threads = threads or os.cpu_count() or 1
        self.prompt_lookup = prompt_lookup
        self.lookup_stats = LookupStats()
        self.prefix_stats = PrefixStats()
        self.capabilities = Capabilities(text=True, batching=True, constraints=True,
                                         grammar_tokens=True, lora=True)
        self._loras: dict[str, Any] = {}  # adapter name -> llama_adapter_lora pointer
        self._lora_retired: list[Any] = []  # unloaded, freed by the worker once unused
        self._lora_current: int | None = None  # address of the adapter set on the context

        mparams = ll.llama_model_default_params()
        # Extra buffer types hold repacked copies of the weights for faster CPU kernels (x86:
        # Q4_0/Q4_K/IQ4_NL interleaved); off, the mmapped file is used as it is.
        mparams.use_extra_bufts = extra_buffers
        self._model = ll.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise ConfigError(f"llama.cpp could not load the model file {self.model_path.name}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.metadata = _model_metadata(ll, self._model)
        self.chat_template = self.metadata.get("tokenizer.chat_template")
        self.trained_context_length = ll.llama_model_n_ctx_train(self._model)
        self.n_swa = ll.llama_model_n_swa(self._model)  # 0: no sliding-window layers

        # Default: the trained context, capped so that `parallel` caches stay modest
        # (8192 tokens x 16 sequences = 564 MiB of f16 cache for the 270M).
        per_seq = context_length or min(self.trained_context_length, 8192)
        cparams = ll.llama_context_default_params()
        # Sliding-window layers keep their window plus one micro-batch (swa_full off): a prefix
        # is reused only where those layers still hold the positions it needs (_window_holds).
        cparams.swa_full = swa_full
        self.swa_full = swa_full
        # Each sequence gets its own `per_seq` cells (kv_unified off): one long request can never
        # starve the others of cache mid-generation, so admission is a simple count.
        cparams.n_ctx = per_seq * parallel
        cparams.n_seq_max = parallel
        cparams.kv_unified = False
        cparams.n_batch = batch_size
        cparams.n_ubatch = min(batch_size, UBATCH)
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention
                                   else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if kv_cache_type != "f16":  # a quantized V cache needs flash attention in llama.cpp
            if not flash_attention:
                raise ConfigError(f"a {kv_cache_type} KV cache needs flash attention")
            cparams.type_k = cparams.type_v = _KV_TYPES[kv_cache_type](ll)
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise ConfigError("llama.cpp could not create a context (is the context too large "
                              "for memory?)")
        self.context_length = ll.llama_n_ctx_seq(self._ctx)
        if self.context_length != per_seq:  # llama.cpp allocates the cache in blocks of 256
            log.warning("context length %d rounded up to %d by llama.cpp", per_seq,
                        self.context_length)
        self.batch_size = batch_size
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(batch_size, 0, parallel)

        # End-of-generation tokens, from the vocabulary's own attributes.
        self.eog_ids = frozenset(t for t in range(self.n_vocab)
                                 if ll.llama_vocab_is_eog(self._vocab, t))
        self._text = VocabText(ll, self._vocab)
        self._cand: np.ndarray | None = None  # candidate buffer for constrained sampling
        self._cand_ids: np.ndarray | None = None

        # Shared between the event loop (submit) and the worker (admit): guarded by _cond.
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        self._finish_times: collections.deque[float] = collections.deque(maxlen=64)
        self._slots = [_Slot(i) for i in range(parallel)]
        self._stop = False  # the worker exits
        self._draining = False  # refuse new work
        self._force_end: FinishReason | None = None  # end everything now with this reason
        self._failed: str | None = None
        self._worker = threading.Thread(target=self._run, name="gemmakit-llamacpp", daemon=True)
        self._worker.start()

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> LlamaCppEngine:
        if model.format != "gguf":
            raise ConfigError(f"the llamacpp engine loads GGUF files; '{model.name}' is "
                              f"{model.format} (use --engine transformers)")
        plan = (llamacpp_plan(settings.profile, _file_type_of(model.path))
                if settings.profile else None)
        small = plan.runtime if plan else {}
        given = settings.model_fields_set
        batch_size = settings.batch_size
        if "batch_size" in small and "batch_size" not in given:
            batch_size = small["batch_size"]
        prefix_cache = (settings.prefix_cache if "prefix_cache" in given
                        else small.get("prefix_cache", settings.prefix_cache))
        swa_full = (settings.swa_full if "swa_full" in given
                    else small.get("swa_full", settings.swa_full))
        return cls(model.path, context_length=settings.context_length,
                   threads=settings.threads, batch_size=batch_size,
                   parallel=settings.parallel, max_queue=settings.max_queue,
                   prefill_chunk=settings.prefill_chunk, prefix_cache=prefix_cache,
                   flash_attention=small.get("flash_attention", False),
                   kv_cache_type=small.get("kv_cache_type", "f16"),
                   extra_buffers=small.get("extra_buffers", True),
                   swa_full=swa_full,
                   prompt_lookup=settings.prompt_lookup)

    @classmethod
    def plan_profile(cls, model: ModelRef, profile: str) -> str:
        if model.format != "gguf":
            raise ConfigError("the llamacpp engine loads GGUF files")
        return llamacpp_plan(profile, _file_type_of(model.path)).summary

    @classmethod
    def profile_table(cls, model: ModelRef, home: Path) -> list[ProfileRow]:
        ft = _file_type_of(model.path)
        size = model.path.stat().st_size
        return [{"profile": prof, "plan": llamacpp_plan(prof, ft).summary,
                 "weights_bytes": size, "refused": None} for prof in PROFILES]

    # --- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`, never adding BOS. `special`: parse control-token markup."""
        return self._text.tokenize(text, special=special)

    def token_piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        return self._text.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", "replace")

    # --- submission (event-loop side) -------------------------------------------------------
    def submit(self, requests: Sequence[GenerationRequest]) -> list[AsyncIterator[Chunk]]:
        return list(self.submit_sequences(requests))

    def submit_sequences(self, requests: Sequence[GenerationRequest]) -> list[SequenceStream]:
        """Queue `requests` together (all or none) and return their streams. Raises at once —
        never waits — when the engine is full (OverloadedError, with a Retry-After derived from
        the recent completion rate), shutting down, or a prompt cannot fit."""
        if self._failed:
            raise EngineError("the engine stopped after an internal error")
        if self._draining or self._stop:
            raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                          headers={"Retry-After": "5"})
        for req in requests:
            if req.adapter is not None and req.adapter not in self._loras:
                raise InvalidRequestError(f"the adapter '{req.adapter}' is not loaded",
                                          param="model")
        loop = asyncio.get_running_loop()
        seqs = []
        group = object()
        for req in requests:
            max_tokens = generation_budget(req, self.context_length)
            seqs.append(_Sequence(request=req, loop=loop, out=asyncio.Queue(),
                                  max_tokens=max_tokens, group=group))
        with self._cond:
            free = self.parallel - len(self._active)
            queued = len(self._waiting)
            if queued + len(seqs) > self.max_queue + max(free, 0):
                raise OverloadedError(
                    f"The server is at capacity ({self.parallel} running, {queued} waiting); "
                    "retry after the Retry-After interval.",
                    retry_after=self._retry_after_locked(queued + len(seqs)))
            self._waiting.extend(seqs)
            self._cond.notify()
        return [SequenceStream(s) for s in seqs]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate one sequence (submit + iterate). Cancelling the consumer cancels it."""
        (s,) = self.submit_sequences([request])
        try:
            async for chunk in s:
                yield chunk
        finally:
            s.cancel()

    def _retry_after_locked(self, ahead: int) -> int:
        """Seconds until `ahead` requests could have drained, from the recent completion rate."""
        times = self._finish_times
        if len(times) >= 2 and times[-1] > times[0]:
            rate = (len(times) - 1) / (times[-1] - times[0])  # completions per second
            return max(1, min(300, math.ceil(ahead / rate)))
        return 1

    def health(self) -> EngineHealth:
        if self._failed:
            return EngineHealth(ok=False, detail=self._failed)
        with self._cond:
            running, waiting = len(self._active), len(self._waiting)
            used = sum(s.n_past for s in self._active)
        return EngineHealth(ok=self._worker.is_alive() and not self._stop and not self._draining,
                            requests_running=running, requests_waiting=waiting,
                            kv_cache_usage_ratio=used / (self.context_length * self.parallel))

    def kv_accounting(self) -> dict[str, object]:
        """The engine's view of every slot against llama.cpp's own memory positions: a slot's
        cells are its cached prefix (idle) or its running sequence's positions. `consistent` is
        false if any cell is unaccounted for (a leak) or missing."""
        with self._cond:
            running = {s.slot.seq_id: s.n_past for s in self._active if s.slot is not None}
            slots = []
            for slot in self._slots:
                expect = running.get(slot.seq_id, len(slot.cached))
                pos_max = self._ll.llama_memory_seq_pos_max(self._mem, slot.seq_id)
                slots.append({"seq_id": slot.seq_id, "expected_cells": expect,
                              "llama_positions": pos_max + 1, "running": slot.seq_id in running})
        return {"slots": slots,
                "consistent": all(s["expected_cells"] == s["llama_positions"] for s in slots)}

    async def drain(self, timeout: float) -> None:
        """Graceful shutdown: refuse new work, let running and queued requests finish for up to
        `timeout` seconds, then end the rest with finish_reason "shutdown"."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._active and not self._waiting:
                    return
            await asyncio.sleep(0.05)
        with self._cond:
            self._force_end = "shutdown"
            self._cond.notify()
        while True:  # the worker ends them at its next step
            with self._cond:
                if not self._active and not self._waiting:
                    return
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        if self._stop:
            return
        with self._cond:
            self._stop = True
            self._force_end = self._force_end or "shutdown"
            self._cond.notify()
        await asyncio.to_thread(self._worker.join)
        ll = self._ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)

    # --- worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._active or self._waiting or self._stop):
                        self._cond.wait()
                    if self._force_end:
                        self._end_all_locked(self._force_end)
                    if self._stop and not self._active and not self._waiting:
                        return
                    self._drop_cancelled_locked()
                    while self._waiting and len(self._active) < self.parallel:
                        group = [self._waiting.popleft()]
                        while (self._waiting and self._waiting[0].group is group[0].group
                               and len(self._active) + len(group) < self.parallel):
                            group.append(self._waiting.popleft())
                        group = [seq for seq in group if not seq.cancelled]
                        if group:
                            self._admit_locked(group)
                if self._active:
                    self._step()
        except Exception as e:  # an engine bug or a llama.cpp failure: fail loudly, not silently
            log.exception("llama.cpp worker failed")
            self._failed = type(e).__name__
            with self._cond:
                for seq in [*self._active, *self._waiting]:
                    seq.emit(EngineError("generation failed inside the engine"))
                self._active.clear()
                self._waiting.clear()

    def _admit_locked(self, group: list[_Sequence]) -> None:
        """Admit the sequences of one submit() call. The choices of one request take consecutive
        ids in choice order where there is room: a token's logits depend on its position in the
        batch (measured: up to 0.36 in a logit when two sequences swap places), and the batch is
        laid out by id, so this keeps a request with n choices and a seed giving the same n
        outputs every time."""
        busy = {s.slot.seq_id for s in self._active if s.slot is not None}
        k = len(group)
        if k > 1:
            blocks = [range(i, i + k) for i in range(self.parallel - k + 1)
                      if not busy.intersection(range(i, i + k))]
            if blocks:
                block = min(blocks, key=lambda r: (_runs(busy | set(r)),
                                                   max(self._slots[i].last_used for i in r),
                                                   r.start))
                for seq, i in zip(group, block):
                    self._admit_one_locked(seq, self._slots[i])
                return
        for seq in group:
            self._admit_one_locked(seq)

    def _admit_one_locked(self, seq: _Sequence, target: _Slot | None = None) -> None:
        """Give `seq` a free slot (`target`, if given) and seed it with the longest reusable
        cached prefix.

        Which slot: one that keeps the running sequence ids contiguous. llama.cpp splits a batch
        over separate KV streams into one micro-batch per run of consecutive sequence ids, and
        each micro-batch reads all the weights again, so scattered ids would cost a whole extra
        forward pass per step. What it starts with: the longest prompt prefix held by any slot
        (an idle slot's cache or a running sequence's cells); when that is another slot, its
        cells are copied across (a memory copy, far cheaper than recomputing them)."""
        try:
            seq.sampler, seq.greedy_bias, seq.grammar = self._make_sampler(seq.request)
        except Exception as e:  # this request's sampler or grammar: it alone fails
            self._fail_sequence(seq, e, "building its sampler")
            return
        busy = {s.slot.seq_id for s in self._active if s.slot is not None}
        prompt = seq.request.prompt_tokens
        free = [slot for slot in self._slots if slot.seq_id not in busy]
        assert free
        held = {slot.seq_id: slot.cached for slot in free}
        held.update({s.slot.seq_id: s.tokens_in_kv() for s in self._active
                     if s.slot is not None})

        # Cells computed under another adapter (or none) hold other keys and values.
        owner = {slot.seq_id: slot.adapter for slot in self._slots}

        def shared(seq_id: int) -> int:
            if not self.prefix_cache or seq.scoring:  # a scored prompt needs every logit
                return 0
            if owner[seq_id] != seq.request.adapter:
                return 0
            n = _common_prefix(held[seq_id], prompt)
            # A prompt the cache holds whole (a retry, a regenerated reply) is computed afresh:
            # llama.cpp's kernels are not bit-exact across batch shapes, and recomputing the
            # prompt the way it was first computed keeps "same prompt, same seed, same output".
            # A short shared prefix (the turn markup every chat starts with) saves nothing and
            # would make the numerics depend on what ran before, so only a real prefix counts.
            return n if MIN_PREFIX_REUSE <= n < len(prompt) else 0

        prefix = {seq_id: shared(seq_id) for seq_id in held}
        # Reusable where the sliding-window layers still hold what the prefix's next token needs.
        reuse = {seq_id: n if n and self._window_holds(seq_id, n) else 0
                 for seq_id, n in prefix.items()}
        if any(prefix.values()) and not any(reuse.values()):
            self.prefix_stats.window_refused += 1
        if target is None:
            target = min(free, key=lambda slot: (_runs(busy | {slot.seq_id}),
                                                 -reuse[slot.seq_id], slot.last_used,
                                                 slot.seq_id))
        # Ties go to the target itself (no copy), then to an idle slot: a running source may
        # itself be waiting for a copy into it.
        source = max(reuse, key=lambda seq_id: (reuse[seq_id], seq_id == target.seq_id,
                                                seq_id not in busy))
        keep = reuse[source]
        ll = self._ll
        if keep and source != target.seq_id:
            # Separate KV streams: the copy takes the source's whole stream (applied at the next
            # decode), then the cells past the shared prefix are dropped.
            ll.llama_memory_seq_cp(self._mem, source, target.seq_id, -1, -1)
        if not ll.llama_memory_seq_rm(self._mem, target.seq_id, keep, -1):
            keep = 0  # partial removal refused (cannot happen with a full cache): start over
            ll.llama_memory_seq_rm(self._mem, target.seq_id, -1, -1)
        seq.slot = target
        seq.n_past = seq.n_prompt_done = seq.cached_prompt = keep
        target.cached = []
        target.adapter = seq.request.adapter
        seq.prompt_lp = [] if seq.scoring else None
        seq.t_start = time.perf_counter()
        seq.text = TokenText(seq.request.sampling.stop, seq.max_tokens)
        self._active.append(seq)

    def _window_holds(self, seq_id: int, n: int) -> bool:
        """Whether sequence `seq_id`'s cells can continue from position `n` (its first `n`
        positions kept, the rest dropped). Every layer that keeps the whole context can; a
        sliding-window layer without swa_full holds only the latest window plus one micro-batch
        of positions, overwritten oldest first, and the token at `n` attends to the window
        before it: those positions must still be there. The check llama.cpp's own server makes;
        otherwise the prompt is computed afresh (counted: gemmakit_prefix_reuse_window_refused_total)."""
        if self.swa_full or not self.n_swa:
            return True
        oldest = self._ll.llama_memory_seq_pos_min(self._mem, seq_id)
        return bool(oldest <= max(0, n - self.n_swa))

    def _retire_locked(self, seq: _Sequence) -> None:
        """Take `seq` out of the batch; its cells stay as the slot's prefix cache."""
        self._active.remove(seq)
        slot = seq.slot
        assert slot is not None
        slot.cached = seq.tokens_in_kv()
        slot.last_used = time.perf_counter()
        self._free_samplers(seq)

    def _free_samplers(self, seq: _Sequence) -> None:
        for attr in ("sampler", "grammar"):
            if getattr(seq, attr) is not None:
                self._ll.llama_sampler_free(getattr(seq, attr))
                setattr(seq, attr, None)

    def _fail_sequence(self, seq: _Sequence, error: Exception, doing: str) -> None:
        """End one sequence with an error and keep serving the others (fault isolation). An
        error the request caused keeps its status (a 400); anything else is logged with the
        request id and reaches the client as a 500 naming it."""
        if isinstance(error, GemmakitError):
            out: GemmakitError = error
        elif isinstance(error, _RequestFault):
            out = InvalidRequestError(str(error))
        else:
            log.error("request %s failed while %s", seq.request.request_id, doing,
                      exc_info=error)
            out = EngineError("generation failed inside the engine")
        seq.emit(out)
        with self._cond:
            if seq in self._active:
                self._retire_locked(seq)
            else:
                self._free_samplers(seq)

    def _drop_cancelled_locked(self) -> None:
        for seq in [s for s in self._active if s.cancelled]:
            self._retire_locked(seq)
        if any(s.cancelled for s in self._waiting):
            self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)

    def _end_all_locked(self, reason: FinishReason) -> None:
        for seq in list(self._active):
            text = seq.text.close() if seq.text else ""
            seq.emit(Chunk(text=text, finish_reason=reason,
                           stats=self._stats(seq, time.perf_counter())))
            self._retire_locked(seq)
        for seq in self._waiting:
            seq.emit(Chunk(finish_reason=reason, stats=ChunkStats(
                prompt_tokens=len(seq.request.prompt_tokens))))
        self._waiting.clear()
        self._force_end = None

    def _step(self) -> None:
        """One scheduling round: prompt chunks first, then a token for every decoding sequence.

        The prompt chunks go in a llama_decode of their own, so a newcomer's first token comes
        out of it at once instead of after the running streams' next token as well (llama.cpp
        would compute a mixed batch as two micro-batches anyway: the decode tokens and the rest
        of the prompt); it then decodes with the others in the same round. While anything
        decodes, a round reads at most `prefill_chunk` prompt tokens (first come, first served),
        so a long prompt delays the running streams by one short chunk per round, never by its
        whole prefill."""
        prefilling = [s for s in self._active if s.prefilling and not s.cancelled]
        if prefilling:
            any_decoding = any(not s.prefilling for s in self._active)
            budget = self.prefill_chunk if any_decoding else self.batch_size
            rows = min(SCORE_ROWS, self.batch_size)  # logits rows left for scored prompts
            plan = []
            for seq in prefilling:
                take = min(budget, len(seq.request.prompt_tokens) - seq.n_prompt_done)
                if seq.scoring:
                    take = min(take, rows)
                    rows -= take
                if take <= 0:
                    continue
                plan.append((seq, take))
                budget -= take
                if budget <= 0:
                    break
            self._decode_by_adapter(plan)
        decoding = [s for s in self._active
                    if not s.prefilling and not s.cancelled and s.generated]
        if len(decoding) == 1 and self._lookup_eligible(decoding[0]):
            seq = decoding[0]
            self._use_adapter(seq.request.adapter)
            done = self._decode_lookup(seq)
            self._free_retired_adapters()
            if done:
                return
        if decoding:
            self._decode_by_adapter([(s, 1) for s in decoding])

    # --- LoRA adapters ------------------------------------------------------------------------
    def _decode_by_adapter(self, plan: list[tuple[_Sequence, int]]) -> None:
        """llama.cpp applies one adapter set per context, so a step decodes one batch per
        adapter in use (the base, None, first): requests for different adapters and the base
        run in the same round, each group reading the weights once."""
        groups: dict[str | None, list[tuple[_Sequence, int]]] = {}
        for item in plan:
            groups.setdefault(item[0].request.adapter, []).append(item)
        for name in sorted(groups, key=lambda n: (n is not None, n or "")):
            self._use_adapter(name)
            self._decode(groups[name])
        self._free_retired_adapters()

    def _use_adapter(self, name: str | None) -> None:
        """Set adapter `name` (None: none) on the context; compared by the adapter's address,
        so a name loaded again (a new adapter) is set afresh."""
        ll = self._ll
        with self._cond:
            ptr = None if name is None else self._loras[name]
        address = None if ptr is None else ctypes.cast(ptr, ctypes.c_void_p).value
        if address == self._lora_current:
            return
        if ptr is None:
            rc = ll.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            ptrs = (ll.llama_adapter_lora_p_ctypes * 1)(ptr)
            scales = (ctypes.c_float * 1)(1.0)
            rc = ll.llama_set_adapters_lora(self._ctx, ptrs, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora returned {rc}")
        self._lora_current = address

    def _free_retired_adapters(self) -> None:
        """Free unloaded adapters (worker thread, between decodes); the context first lets go
        of one it still has set."""
        with self._cond:
            if not self._lora_retired:
                return
            retired, self._lora_retired = self._lora_retired, []
        if self._lora_current in {ctypes.cast(p, ctypes.c_void_p).value for p in retired}:
            self._use_adapter(None)
        for ptr in retired:
            self._ll.llama_adapter_lora_free(ptr)

    def load_adapter(self, adapter: Adapter) -> None:
        """Load a stored adapter: its GGUF LoRA (converted once, kept beside it) through
        llama.cpp's adapter API. Blocking."""
        from gemmakit.finetune.export import ensure_lora_gguf

        path = ensure_lora_gguf(adapter)
        ptr = self._ll.llama_adapter_lora_init(self._model, str(path).encode())
        if not ptr:
            raise ConfigError(f"llama.cpp could not load the adapter '{adapter.name}' ({path})")
        with self._cond:
            old = self._loras.pop(adapter.name, None)
            if old is not None:
                self._lora_retired.append(old)
            self._loras[adapter.name] = ptr
        log.info("adapter %s loaded (%s)", adapter.name, path.name)

    def unload_adapter(self, name: str) -> None:
        with self._cond:
            if name not in self._loras:
                raise InvalidRequestError(f"the adapter '{name}' is not loaded", param="lora_name")
            busy = [s for s in [*self._active, *self._waiting] if s.request.adapter == name]
            if busy:
                raise InvalidRequestError(f"the adapter '{name}' has {len(busy)} requests "
                                          "running; unload it once they finish",
                                          param="lora_name", code="adapter_in_use")
            self._lora_retired.append(self._loras.pop(name))
            for slot in self._slots:  # its cached cells can never be reused
                if slot.adapter == name:
                    slot.cached = []
            self._cond.notify()
        if not self._worker.is_alive():
            self._free_retired_adapters()

    def adapter_names(self) -> list[str]:
        return sorted(self._loras)

    def _decode(self, plan: list[tuple[_Sequence, int]]) -> None:
        """Decode `plan` (sequence, tokens it feeds: 1 for a decoding sequence, a chunk for a
        prefilling one) in one llama_decode, then sample where logits were computed. Entries go
        into the batch in sequence-id order, which is what lets llama.cpp run contiguous ids as
        one micro-batch."""
        n = 0
        sample_at: list[tuple[_Sequence, int]] = []  # (sequence, batch index of its logits)
        scored: list[tuple[_Sequence, int, int, int]] = []  # (seq, batch index, position, rows)
        for seq, take in sorted(plan, key=lambda item: _seq_id(item[0])):
            seq_id = _seq_id(seq)
            if not seq.prefilling:
                self._batch_add(n, seq.generated[-1], seq.n_past, seq_id, True)
                sample_at.append((seq, n))
                seq.n_past += 1
                n += 1
                continue
            prompt = seq.request.prompt_tokens
            for j in range(take):
                self._batch_add(n + j, prompt[seq.n_prompt_done + j], seq.n_past + j, seq_id,
                                seq.scoring)
            if seq.scoring:
                scored.append((seq, n, seq.n_prompt_done, take))
            n += take
            seq.n_past += take
            seq.n_prompt_done += take
            if not seq.prefilling:  # the prompt's last token: its logits give the first token
                self._batch.logits[n - 1] = True
                sample_at.append((seq, n - 1))
        self._batch.n_tokens = n
        if not self._llama_decode([seq for seq, _ in plan]):
            return
        for seq, idx, pos, k in scored:
            try:
                self._score(seq, idx, pos, k)
            except Exception as e:
                self._fail_sequence(seq, e, "scoring its prompt")
        # One wake-up of each consumer event loop per step, not one per token.
        out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Chunk]]] = {}
        for seq, idx in sample_at:
            if seq.slot is None or seq not in self._active:
                continue  # failed while scoring
            try:
                chunk = self._finish_scoring(seq) if seq.max_tokens == 0 else \
                    self._sample(seq, idx)
            except Exception as e:  # sampling, grammar or detokenizing this one sequence
                self._fail_sequence(seq, e, "sampling")
                continue
            if chunk is not None:
                out.setdefault(seq.loop, []).append((seq.out, chunk))
        for loop, items in out.items():
            with contextlib.suppress(RuntimeError):  # that event loop is already closed
                loop.call_soon_threadsafe(_deliver, items)

    def _llama_decode(self, seqs: list[_Sequence]) -> bool:
        """llama_decode of the batch as filled; False when it failed. The sequences of a failed
        batch end with an error and their cells are dropped (their state is unknown); the
        engine goes on serving the others."""
        rc = self._ll.llama_decode(self._ctx, self._batch)
        if rc == 0:
            return True
        err = RuntimeError(f"llama_decode returned {rc}")
        for seq in seqs:
            slot = seq.slot
            self._fail_sequence(seq, err, "decoding")
            if slot is not None:
                self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.cached = []
        return False

    # --- prompt-lookup decoding ---------------------------------------------------------------
    def _lookup_eligible(self, seq: _Sequence) -> bool:
        """Prompt lookup drafts only for plain greedy decoding, whose output it cannot change:
        no sampler chain, grammar or logprobs."""
        return (self.prompt_lookup > 0 and seq.sampler is None and seq.grammar is None
                and not seq.request.sampling.logprobs)

    def _decode_lookup(self, seq: _Sequence) -> bool:
        """One step of prompt-lookup decoding for `seq`, decoding alone: its last token and a
        draft of what followed its last n-gram earlier in its prompt or reply go into one
        llama_decode with logits at every row; the greedy token of each row is taken while it
        confirms the draft, then the first one that does not (the model's own correction) ends
        the step. Each step emits one token more than it accepted, so a wrong draft costs its
        rows' compute but never a token. False: nothing to draft (decode as usual).

        The tokens are the model's greedy choices, as without lookup; but llama.cpp's kernels
        are not bit-exact across batch shapes (nor are the cache cells the verified rows
        write), so where the best two logits nearly tie the choice can differ from a one-row
        step's, as it already can between a stream decoded alone and beside others
        (docs/batching.md measures both)."""
        if seq.lookup is None:
            seq.lookup = NgramIndex()
        seq.lookup.sync(seq.request.prompt_tokens, seq.generated)
        room = min(self.prompt_lookup, seq.max_tokens - len(seq.generated) - 1,
                   self.context_length - seq.n_past - 1, self.batch_size - 1)
        draft = seq.lookup.draft(room) if room > 0 else []
        if not draft:
            return False
        seq_id = _seq_id(seq)
        base = seq.n_past
        fed = [seq.generated[-1], *draft]
        for j, token in enumerate(fed):
            self._batch_add(j, token, base + j, seq_id, True)
        self._batch.n_tokens = len(fed)
        if not self._llama_decode([seq]):
            return True
        out: list[int] = []
        for j in range(len(fed)):
            token = self._argmax(j, seq.greedy_bias)
            out.append(token)
            if j == len(draft) or token != draft[j]:
                break
        stats = self.lookup_stats
        stats.steps += 1
        stats.drafted += len(draft)
        stats.accepted += len(out) - 1
        if seq.cancelled:  # nothing taken: the step is undone
            self._ll.llama_memory_seq_rm(self._mem, seq_id, base, -1)
            return True
        chunk = Chunk(prompt_logprobs=seq.prompt_lp)
        seq.prompt_lp = None
        now = time.perf_counter()
        for token in out:
            seq.n_past += 1  # the token before it is now in the cache (as in a plain step)
            if self._take(seq, token, chunk, now):
                break
        # The cells of draft tokens that were not confirmed (or came after the end) go.
        self._ll.llama_memory_seq_rm(self._mem, seq_id, seq.n_past, -1)
        with contextlib.suppress(RuntimeError):  # that event loop is already closed
            seq.loop.call_soon_threadsafe(_deliver, [(seq.out, chunk)])
        return True

    def metric_families(self) -> Iterable[Any]:
        """Prefix reuse's refusals and prompt-lookup decoding's counts (those only while it is
        on), labelled with the model file (several llama.cpp models may be served at once)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        label = [self.model_path.name]
        refused = CounterMetricFamily(
            "gemmakit_prefix_reuse_window_refused",
            "Prompts that shared a cached prefix but were computed afresh: the sliding-window "
            "layers no longer held the positions that prefix needs.", labels=["model_file"])
        refused.add_metric(label, self.prefix_stats.window_refused)
        if not self.prompt_lookup:
            return [refused]
        s = self.lookup_stats
        families = [refused]
        for name, what, value in (
                ("steps", "steps that verified a draft", s.steps),
                ("draft_tokens", "draft tokens verified", s.drafted),
                ("accepted_tokens", "draft tokens accepted (the model's greedy choice was the "
                                    "drafted token)", s.accepted)):
            family = CounterMetricFamily(f"gemmakit_prompt_lookup_{name}",
                                         f"Prompt-lookup decoding: {what}.",
                                         labels=["model_file"])
            family.add_metric(label, value)
            families.append(family)
        ratio = GaugeMetricFamily("gemmakit_prompt_lookup_acceptance_ratio",
                                  "Prompt-lookup decoding: accepted / drafted tokens so far.",
                                  labels=["model_file"])
        ratio.add_metric(label, s.accepted / s.drafted if s.drafted else 0.0)
        return [*families, ratio]

    def _batch_add(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _score(self, seq: _Sequence, idx: int, pos: int, k: int) -> None:
        """Add the logprobs of the prompt tokens that the `k` logits rows from batch index `idx`
        (prompt positions pos..pos+k-1) predict; the prompt's last row predicts the first
        generated token instead, and is sampled as usual."""
        assert seq.prompt_lp is not None
        prompt = seq.request.prompt_tokens
        targets = prompt[pos + 1: pos + k + 1]
        ptr = self._ll.llama_get_logits_ith(self._ctx, idx)
        rows = np.ctypeslib.as_array(ptr, shape=(k, self.n_vocab))[: len(targets)]
        # In place: llama.cpp's rows are not read again (the last prompt row, which the first
        # generated token is sampled from, is not among them).
        seq.prompt_lp += scored_tokens(rows, targets,
                                       seq.request.sampling.prompt_logprobs or 0,
                                       self.token_piece, in_place=True)

    def _finish_scoring(self, seq: _Sequence) -> Chunk | None:
        """The end of a sequence that generates nothing (max_tokens 0): its prompt scored."""
        if seq.cancelled:
            return None
        now = time.perf_counter()
        chunk = Chunk(finish_reason="length", stats=self._stats(seq, now),
                      prompt_logprobs=seq.prompt_lp)
        seq.prompt_lp = None
        with self._cond:
            self._retire_locked(seq)
            self._finish_times.append(now)
        return chunk

    def _sample(self, seq: _Sequence, idx: int) -> Chunk | None:
        """Sample `seq`'s next token from the logits at batch index `idx`; the chunk to send."""
        if seq.cancelled:
            return None  # dropped at the next step; its logits are not worth sampling
        ll = self._ll
        req = seq.request
        logprob = None
        if req.sampling.logprobs:
            logprob = self._logprobs_at(idx, req.sampling.top_logprobs)
        if seq.grammar is not None:
            token = self._sample_constrained(seq, idx)
        elif seq.sampler is not None:
            token = ll.llama_sampler_sample(seq.sampler, self._ctx, idx)
        else:
            token = self._argmax(idx, seq.greedy_bias)
        chunk = Chunk(prompt_logprobs=seq.prompt_lp)
        seq.prompt_lp = None
        if logprob is not None:
            chunk.logprobs.append(logprob(token))
        self._take(seq, token, chunk, time.perf_counter())
        return chunk

    def _take(self, seq: _Sequence, token: int, chunk: Chunk, now: float) -> bool:
        """Append the generated `token` to `seq` and to `chunk` (its id and text); True when it
        ended the sequence (which is then retired)."""
        if seq.t_first is None:
            seq.t_first = now
        seq.generated.append(token)
        chunk.token_ids.append(token)
        assert seq.text is not None
        req = seq.request
        stop = token in self.eog_ids or token in req.stop_token_ids  # no text of its own
        text, finish = seq.text.feed(None if stop else self.token_piece(token))
        chunk.text += text
        if finish is None:
            return False
        chunk.finish_reason = finish
        chunk.stats = self._stats(seq, now)
        with self._cond:
            self._retire_locked(seq)
            self._finish_times.append(now)
        return True

    def _stats(self, seq: _Sequence, now: float) -> ChunkStats:
        return finish_stats(prompt_tokens=len(seq.request.prompt_tokens),
                            completion_tokens=len(seq.generated), t_submit=seq.t_submit,
                            t_start=seq.t_start, t_first=seq.t_first, now=now,
                            cached_prompt_tokens=seq.cached_prompt)

    def _logprobs_at(self, idx: int, top_n: int):
        """Log-probabilities of the raw model distribution at batch index `idx` (before sampling
        transforms, as vLLM reports them). Returns a function of the chosen token."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        m = logits.max()
        lse = m + np.log(np.exp(logits - m).sum())
        top_ids = np.argpartition(-logits, top_n)[:top_n] if top_n else np.array([], dtype=int)
        top_ids = top_ids[np.argsort(-logits[top_ids])]

        def entry(tok: int) -> TopLogprob:
            piece = self.token_piece(tok)
            return TopLogprob(piece.decode("utf-8", "replace"), float(logits[tok] - lse),
                              list(piece))

        def chosen(token: int) -> TokenLogprob:
            e = entry(token)
            return TokenLogprob(e.token, e.logprob, e.bytes,
                                tuple(entry(int(t)) for t in top_ids))

        return chosen

    def _sample_constrained(self, seq: _Sequence, idx: int) -> int:
        """A token under the request's grammar, sampled first without it: the grammar checks
        that one token, and only when it rejects it is the grammar applied to the whole
        vocabulary and the token sampled again (what llama.cpp's common sampler does). Checking
        262k candidates every step cost a constrained token ~3x a free one. The result is the
        same: greedy, the best token is the best allowed one whenever it is allowed; sampled,
        a draw from p that is kept when allowed and otherwise redrawn from p restricted to the
        allowed set gives each allowed token p(t) / p(allowed), exactly the restricted
        distribution. Greedy, a refused pick is followed by the next best tokens, one check
        each (`_best_allowed`), before any whole-vocabulary pass. Every token is still checked,
        so validity is unchanged."""
        ll, grammar, chain = self._ll, seq.grammar, seq.sampler
        if chain is None:
            token = self._argmax(idx, seq.greedy_bias)
        else:
            cand = self._candidates(idx)
            ll.llama_sampler_apply(chain, ctypes.byref(cand))
            token = int(cand.data[cand.selected].id)
        if not self._grammar_allows(grammar, token):
            found = self._best_allowed(idx, seq, grammar) if chain is None else None
            if found is not None:
                token = found
            elif chain is None:  # greedy: the best allowed token (the grammar keeps the order)
                cand = self._candidates(idx)
                ll.llama_sampler_apply(grammar, ctypes.byref(cand))
                assert self._cand is not None
                logits = self._cand["logit"]
                if seq.greedy_bias is not None:
                    ids, add = seq.greedy_bias
                    logits[ids] += add
                token = int(np.argmax(logits))
            else:
                cand = self._candidates(idx)
                ll.llama_sampler_apply(grammar, ctypes.byref(cand))
                ll.llama_sampler_apply(chain, ctypes.byref(cand))
                token = int(cand.data[cand.selected].id)
        ll.llama_sampler_accept(grammar, token)
        if chain is not None:
            ll.llama_sampler_accept(chain, token)
        return token

    def _candidates(self, idx: int):
        """The logits at batch index `idx` as a llama.cpp candidate array (a buffer reused by
        the worker: ids in vocabulary order, the raw logits)."""
        ll = self._ll
        if self._cand is None:
            self._cand = np.zeros(self.n_vocab, dtype=np.dtype(
                [("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
            self._cand_ids = np.arange(self.n_vocab, dtype=np.int32)
        ptr = ll.llama_get_logits_ith(self._ctx, idx)
        assert self._cand is not None
        self._cand["id"] = self._cand_ids
        self._cand["logit"] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        self._cand["p"] = 0.0
        return ll.llama_token_data_array(
            data=self._cand.ctypes.data_as(ctypes.POINTER(ll.llama_token_data)),
            size=self.n_vocab, selected=-1, sorted=False)

    def _best_allowed(self, idx: int, seq: _Sequence, grammar) -> int | None:
        """Greedy under a grammar that refused the best token: the GRAMMAR_TOP_K best tokens
        (logit bias applied, equal logits in id order, as argmax takes them) checked one at a
        time. The first the grammar allows is the best allowed token of the whole vocabulary
        when its logit is above every token outside those checked; otherwise (none allowed, or
        a tie at the edge) None, and the grammar filters the whole vocabulary."""
        k = GRAMMAR_TOP_K
        if k <= 0 or k >= self.n_vocab:
            return None
        ptr = self._ll.llama_get_logits_ith(self._ctx, idx)
        row = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        bias = seq.greedy_bias
        if bias is not None:
            ids, add = bias
            saved = row[ids]
            row[ids] = saved + add
        try:
            part = np.argpartition(row, -(k + 1))[-(k + 1):]
            vals = row[part]
        finally:
            if bias is not None:
                row[ids] = saved
        order = np.lexsort((part, -vals))  # best first, equal logits by id
        edge = vals[order[k]]  # the best logit outside the k checked
        for j in order[:k]:
            if vals[j] <= edge:
                return None
            tok = int(part[j])
            if self._grammar_allows(grammar, tok):
                return tok
        return None

    def _grammar_allows(self, grammar, token: int) -> bool:
        ll = self._ll
        one = ll.llama_token_data(id=token, logit=0.0, p=0.0)
        arr = ll.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1,
                                        sorted=False)
        ll.llama_sampler_apply(grammar, ctypes.byref(arr))
        return math.isfinite(one.logit)

    def _argmax(self, idx: int, bias: tuple[np.ndarray, np.ndarray] | None) -> int:
        """Greedy choice at batch index `idx`, the first of equal maxima as llama.cpp's greedy
        sampler takes it. A logit bias goes onto llama.cpp's own logits row and comes off again
        after the argmax: copying the 262k-entry row instead (1 MB) doubled the cost of a token."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, idx)
        row = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        if bias is None:
            return int(np.argmax(row))
        ids, add = bias
        saved = row[ids]  # a copy (fancy indexing)
        row[ids] = saved + add
        try:
            return int(np.argmax(row))
        finally:
            row[ids] = saved

    def _make_sampler(self, req: GenerationRequest):
        """(chain, greedy bias, grammar): the request's llama.cpp sampler chain, or for plain
        greedy decoding None and the logit bias to add instead, and its grammar sampler (None
        without a constraint; it stays outside the chain, see _sample_constrained). Greedy
        decoding skips the chain: llama.cpp's samplers start by copying the whole 262k-entry
        distribution into a candidate array (~0.4 ms a token here), where an argmax over the
        logits takes a tenth of that, and at 8 streams that is 3 ms of every decode step."""
        ll = self._ll
        sp: SamplingParams = req.sampling
        bias = {int(t): float(b) for t, b in sp.logit_bias.items() if 0 <= int(t) < self.n_vocab}
        if sp.ignore_eos:
            for t in self.eog_ids | req.stop_token_ids:
                bias[t] = float("-inf")
        penalties = (sp.repetition_penalty, sp.frequency_penalty,
                     sp.presence_penalty) != (1.0, 0.0, 0.0)
        grammar = None
        if req.constraint is not None:
            # A GBNF grammar, compiled and parse-checked by gemmakit.tools.constraints; applied
            # apart from the chain (see _sample_constrained).
            grammar = ll.llama_sampler_init_grammar(self._vocab, req.constraint.value.encode(),
                                                    b"root")
            if not grammar:
                raise _RequestFault("llama.cpp refused the request's grammar (from its "
                                    "tool_choice or response_format)")
        if sp.temperature == 0.0 and not penalties:
            if not bias:
                return None, None, grammar
            return None, (np.fromiter(bias, dtype=np.int64),
                          np.fromiter(bias.values(), dtype=np.float32)), grammar
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if bias:
            arr = (ll.llama_logit_bias * len(bias))(*[ll.llama_logit_bias(t, b)
                                                      for t, b in bias.items()])
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(
                self.n_vocab, len(bias), arr))
        if penalties:
            # Penalties look at the last 64 tokens, prompt included (as llama.cpp's server does).
            # llama-cpp-python 0.3.36's llama.h takes the vocabulary size first; older
            # bindings take only the four.
            try:
                pen = ll.llama_sampler_init_penalties(self.n_vocab, 64, sp.repetition_penalty,
                                                      sp.frequency_penalty, sp.presence_penalty)
            except TypeError:  # pragma: no cover - depends on the installed binding
                pen = ll.llama_sampler_init_penalties(64, sp.repetition_penalty,
                                                      sp.frequency_penalty, sp.presence_penalty)
            for t in req.prompt_tokens[-64:]:
                ll.llama_sampler_accept(pen, t)
            ll.llama_sampler_chain_add(chain, pen)
        if sp.temperature == 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain, None, grammar
        if sp.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(sp.top_k))
        if sp.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sp.top_p, 1))
        if sp.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(sp.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sp.temperature))
        seed = sp.seed if sp.seed is not None else int.from_bytes(os.urandom(4), "little")
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain, None, grammar


class VocabText:
    """Text to token ids and back on a llama.cpp vocabulary (a loaded model's, or one loaded
    `vocab_only` by the gateway): ids never start with BOS, and a token's bytes are cached."""

    def __init__(self, ll, vocab) -> None:
        self._ll, self._vocab = ll, vocab
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # pragma: no cover - n_max is always enough for SentencePiece
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            n = self._ll.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0,
                                              False)
            piece = self._buf.raw[:n] if n > 0 else b""
            self._pieces[token] = piece
        return piece


class _RequestFault(ValueError):
    """A failure the request itself caused (a grammar llama.cpp refuses): a 400, not a 500."""


def _deliver(items: list[tuple[asyncio.Queue, Chunk]]) -> None:
    for queue, chunk in items:
        queue.put_nowait(chunk)


def _seq_id(seq: _Sequence) -> int:
    """The sequence id of an admitted sequence (every sequence in a batch has a slot)."""
    assert seq.slot is not None
    return seq.slot.seq_id


def _runs(ids: set[int]) -> int:
    """How many runs of consecutive integers `ids` forms ({0, 1, 2, 5} has two)."""
    return sum(1 for i in ids if i - 1 not in ids)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def describe(path: str | Path) -> dict[str, object]:
    """Facts for `gemmakit models`, from the file's own metadata."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture", "?")
    return {
        "architecture": arch,
        "name": meta.get("general.name"),
        "context_length": int(meta[f"{arch}.context_length"])
        if f"{arch}.context_length" in meta else None,
        "file_type": _file_type_name(meta.get("general.file_type")),
        "chat_template": meta.get("tokenizer.chat_template"),
        "modalities": ["text"],
    }


def _file_type_of(path: str | Path) -> str | None:
    return _file_type_name(read_gguf_metadata(path).get("general.file_type"))


def _file_type_name(value: str | None) -> str | None:
    if value is None:
        return None
    with contextlib.suppress(ImportError, ValueError):
        from gguf import LlamaFileType

        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    return value


# --- loading profiles ------------------------------------------------------------------------
# llama.cpp serves a GGUF in its own type; when that does not match the profile, the plan says
# that re-quantization is a separate step (llama-quantize), not a load option.

# Bits per weight of common GGUF file types (llama.cpp's own figures, rounded).
_GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7,
              "Q5_K_S": 5.5, "Q5_0": 5.5, "Q5_1": 6, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_0": 4.5,
              "Q4_1": 5, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q3_K_L": 4.3, "Q2_K": 3.4,
              "IQ4_XS": 4.3, "IQ4_NL": 4.5}
# The bits per weight each profile stands for (4 / 8 / 16), as a band of GGUF types. `edge`
# takes the file as it is (any type): its footprint comes from the runtime settings below.
_PROFILE_BANDS = {"max-efficiency": (0.0, 5.0), "balanced": (5.0, 9.0),
                  "performance": (9.0, 33.0), "edge": (0.0, 33.0)}
# The llama.cpp runtime settings of each profile (edge: the smallest footprint). A 64-token
# batch keeps the compute buffer small; a q8_0 KV cache (which needs flash attention) halves
# the cache; sliding-window layers keep only their window (as by default); no repacked weight
# copies (slower decode, docs/models.md).
_PROFILE_RUNTIME: dict[str, dict[str, Any]] = {
    "edge": {"batch_size": 64, "flash_attention": True, "kv_cache_type": "q8_0",
             "extra_buffers": False, "swa_full": False}}
_KV_TYPES = {"q8_0": lambda ll: ll.GGML_TYPE_Q8_0, "f16": lambda ll: ll.GGML_TYPE_F16}


@dataclass(frozen=True)
class GgufPlan:
    profile: str
    file_type: str
    bits: float | None
    note: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    """Engine settings the profile sets (batch_size, flash_attention, kv_cache_type,
    extra_buffers); batch_size only where --batch-size is not given."""

    @property
    def summary(self) -> str:
        s = f"{self.profile} on llama.cpp: {self.file_type} (the file's own type)"
        if self.runtime:
            r = self.runtime
            s += (f", {r['kv_cache_type']} KV cache with flash attention, batch "
                  f"{r['batch_size']}, {'repacked' if r['extra_buffers'] else 'no repacked'} "
                  "weight copies")
            if not r["swa_full"]:
                s += ", sliding layers keep only their window"
        return f"{s}; {self.note}" if self.note else s


def llamacpp_plan(profile: str, file_type: str | None) -> GgufPlan:
    """llama.cpp serves a GGUF in its own type: the plan says so, and says when the file does not
    match the profile that re-quantizing is a separate step."""
    check_name(profile)
    ft = (file_type or "unknown").upper()
    bits = _GGUF_BITS.get(ft)
    lo, hi = _PROFILE_BANDS[profile]
    note = None
    if profile != "edge" and (bits is None or not lo < bits <= hi):
        want = {"max-efficiency": "4-bit (Q4_K_M)", "balanced": "8-bit (Q8_0)",
                "performance": "16-bit (F16/BF16)"}[profile]
        note = (f"the profile asks for {want} weights; re-quantization is a separate step "
                "(llama-quantize, or convert_hf_to_gguf.py from the original checkpoint), not a "
                "load option")
    return GgufPlan(profile, ft, bits, note, dict(_PROFILE_RUNTIME.get(profile, {})))
