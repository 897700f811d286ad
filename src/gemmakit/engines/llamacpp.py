"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API.

One worker thread owns the llama.cpp context (a context is not thread-safe) and runs a step loop:
each step builds one `llama_batch` from every active sequence (prompt chunks for new ones, the
last sampled token for running ones), decodes it, and samples one token per sequence that asked for
logits. Sampling runs in llama.cpp's own sampler chain (C); Python only turns token bytes into text
and hands chunks to the event loop, so it stays off the decode path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gemmakit.errors import ConfigError, ContextLengthExceededError, EngineError
from gemmakit.text import StopMatcher, Utf8Stream
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
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.engine.llamacpp")

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
    """Route llama.cpp's own log lines into Python logging: its errors (ggml level 4) as warnings, the rest
    (every tensor at load, cache notes) at debug level."""
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


@dataclass(eq=False)
class _Sequence:
    """Per-request state owned by the worker thread (except `cancelled`, set by the event loop)."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    max_tokens: int
    seq_id: int = -1
    n_past: int = 0  # tokens of this sequence in the KV cache
    n_prompt_done: int = 0
    generated: int = 0
    last_token: int = -1
    sampler: object = None
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopMatcher | None = None
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    t_first: float | None = None

    def emit(self, chunk: Chunk | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the consumer's event loop is already closed
            self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)


class LlamaCppEngine:
    """GGUF through llama.cpp. Construct with `LlamaCppEngine.load(...)` (blocking)."""

    name = "llamacpp"

    def __init__(self, model_path: str | Path, *, context_length: int | None = None,
                 threads: int | None = None, batch_size: int = 512, parallel: int = 1,
                 flash_attention: bool = False) -> None:
        ll = _lib()
        self._ll = ll
        self.model_path = Path(model_path)
        self.parallel = parallel
        self.threads = threads or os.cpu_count() or 1
        self.capabilities = Capabilities(text=True, batching=parallel > 1, constraints=True)

        mparams = ll.llama_model_default_params()
        self._model = ll.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise ConfigError(f"llama.cpp could not load the model file {self.model_path.name}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.metadata = _model_metadata(ll, self._model)
        self.trained_context_length = ll.llama_model_n_ctx_train(self._model)

        cparams = ll.llama_context_default_params()
        cparams.n_ctx = context_length or self.trained_context_length
        cparams.n_batch = batch_size
        cparams.n_ubatch = batch_size
        cparams.n_seq_max = parallel
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention
                                   else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise ConfigError("llama.cpp could not create a context (is the context too large "
                              "for memory?)")
        self.context_length = ll.llama_n_ctx(self._ctx)
        self.batch_size = batch_size
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(batch_size, 0, parallel)

        # End-of-generation tokens, from the vocabulary's own attributes.
        self.eog_ids = frozenset(t for t in range(self.n_vocab)
                                 if ll.llama_vocab_is_eog(self._vocab, t))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

        self._queue: queue.Queue[_Sequence | None] = queue.Queue()
        self._active: list[_Sequence] = []
        self._free_seq_ids = list(range(parallel))
        self._closed = False
        self._failed: str | None = None
        self._worker = threading.Thread(target=self._run, name="gemmakit-llamacpp", daemon=True)
        self._worker.start()

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> LlamaCppEngine:
        if model.format != "gguf":
            raise ConfigError(f"the llamacpp engine loads GGUF files; '{model.name}' is "
                              f"{model.format} (use --engine transformers)")
        return cls(model.path, context_length=settings.context_length,
                   threads=settings.threads, batch_size=settings.batch_size)

    # --- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`, never adding BOS. `special`: parse control-token markup."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # pragma: no cover - n_max is always enough for SentencePiece
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        return list(buf[:n])

    def token_piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf,
                                              len(self._piece_buf), 0, False)
            piece = self._piece_buf.raw[:n] if n > 0 else b""
            self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", "replace")

    # --- generation -----------------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate one sequence. Cancelling the consuming task frees its slot and KV cells."""
        if self._failed:
            raise EngineError("the engine stopped after an internal error")
        if self._closed:
            raise EngineError("the engine is shut down")
        n_prompt = len(request.prompt_tokens)
        room = self.context_length - n_prompt
        max_tokens = request.sampling.max_tokens or room
        if n_prompt == 0 or room <= 0 or max_tokens > room:
            raise ContextLengthExceededError(prompt_tokens=n_prompt,
                                             max_tokens=request.sampling.max_tokens,
                                             context_length=self.context_length)
        seq = _Sequence(request=request, loop=asyncio.get_running_loop(), out=asyncio.Queue(),
                        max_tokens=max_tokens)
        self._queue.put(seq)
        try:
            while True:
                chunk = await seq.out.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True  # no-op if finished; otherwise the worker drops it next step

    def health(self) -> EngineHealth:
        if self._failed:
            return EngineHealth(ok=False, detail=self._failed)
        return EngineHealth(ok=self._worker.is_alive() and not self._closed,
                            requests_running=len(self._active),
                            requests_waiting=self._queue.qsize())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._worker.join)
        ll = self._ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)

    # --- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                if not self._active:
                    item = self._queue.get()
                    if item is None:
                        break
                    self._admit(item)
                while len(self._active) < self.parallel:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._closed = True
                        break
                    self._admit(item)
                self._drop_cancelled()
                if self._active:
                    self._step()
                elif self._closed:
                    break
        except Exception as e:  # an engine bug or a llama.cpp failure: fail loudly, not silently
            log.exception("llama.cpp worker failed")
            self._failed = f"{type(e).__name__}"
            for seq in self._active:
                seq.emit(EngineError("generation failed inside the engine"))
        finally:
            for seq in self._active:
                self._release(seq)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.emit(EngineError("the engine is shut down"))

    def _admit(self, seq: _Sequence) -> None:
        if seq.cancelled:
            return
        seq.seq_id = self._free_seq_ids.pop()
        seq.t_start = time.perf_counter()
        seq.sampler = self._make_sampler(seq.request)
        seq.stops = StopMatcher(seq.request.sampling.stop)
        self._ll.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        self._active.append(seq)

    def _release(self, seq: _Sequence) -> None:
        self._ll.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        if seq.sampler is not None:
            self._ll.llama_sampler_free(seq.sampler)
            seq.sampler = None
        self._free_seq_ids.append(seq.seq_id)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.cancelled]:
            self._active.remove(seq)
            self._release(seq)

    def _step(self) -> None:
        """One decode: prompt chunks for sequences still reading their prompt, one token for the
        rest; then sample every sequence whose logits were computed."""
        batch = self._batch
        budget = self.batch_size
        n = 0
        sample_at: list[tuple[_Sequence, int]] = []  # (sequence, batch index of its logits)
        for seq in self._active:
            prompt = seq.request.prompt_tokens
            if seq.n_prompt_done < len(prompt):
                take = min(budget - n, len(prompt) - seq.n_prompt_done)
                if take <= 0:
                    continue
                for j in range(take):
                    self._batch_add(n + j, prompt[seq.n_prompt_done + j], seq.n_past + j,
                                    seq.seq_id, False)
                n += take
                seq.n_past += take
                seq.n_prompt_done += take
                if seq.n_prompt_done == len(prompt):
                    batch.logits[n - 1] = True
                    sample_at.append((seq, n - 1))
            elif n < budget:
                self._batch_add(n, seq.last_token, seq.n_past, seq.seq_id, True)
                sample_at.append((seq, n))
                seq.n_past += 1
                n += 1
        batch.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for seq, idx in sample_at:
            self._sample(seq, idx)

    def _batch_add(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _sample(self, seq: _Sequence, idx: int) -> None:
        ll = self._ll
        req = seq.request
        logprob = None
        if req.sampling.logprobs:
            logprob = self._logprobs_at(idx, req.sampling.top_logprobs)
        token = ll.llama_sampler_sample(seq.sampler, self._ctx, idx)
        now = time.perf_counter()
        if seq.t_first is None:
            seq.t_first = now
        seq.generated += 1
        seq.last_token = token

        chunk = Chunk(token_ids=[token])
        if logprob is not None:
            chunk.logprobs.append(logprob(token))
        stops = seq.stops
        assert stops is not None
        finish: FinishReason | None = None
        if token in self.eog_ids or token in req.stop_token_ids:
            finish = "stop"  # the stop token itself has no text
            text = stops.feed(seq.utf8.flush())
        else:
            text = stops.feed(seq.utf8.feed(self.token_piece(token)))
            if stops.matched is None and seq.generated >= seq.max_tokens:
                finish = "length"
                text += stops.feed(seq.utf8.flush())
        if stops.matched is not None:
            finish = "stop"
        elif finish is not None:
            text += stops.flush()  # a held-back partial match was ordinary text after all
        chunk.text = text
        if finish is not None:
            chunk.finish_reason = finish
            chunk.stats = self._stats(seq, now)
            self._active.remove(seq)
            self._release(seq)
        seq.emit(chunk)

    def _stats(self, seq: _Sequence, now: float) -> ChunkStats:
        assert seq.t_first is not None
        decode_s = now - seq.t_first
        return ChunkStats(
            prompt_tokens=len(seq.request.prompt_tokens),
            completion_tokens=seq.generated,
            time_to_first_token_s=seq.t_first - seq.t_submit,
            decode_tokens_per_s=(seq.generated - 1) / decode_s if decode_s > 0 else None,
            queue_time_s=seq.t_start - seq.t_submit,
        )

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

    def _make_sampler(self, req: GenerationRequest):
        ll = self._ll
        sp: SamplingParams = req.sampling
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        bias = {int(t): float(b) for t, b in sp.logit_bias.items() if 0 <= int(t) < self.n_vocab}
        if sp.ignore_eos:
            for t in self.eog_ids | req.stop_token_ids:
                bias[t] = float("-inf")
        if bias:
            arr = (ll.llama_logit_bias * len(bias))(*[ll.llama_logit_bias(t, b)
                                                      for t, b in bias.items()])
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(
                self.n_vocab, len(bias), arr))
        if (sp.repetition_penalty, sp.frequency_penalty, sp.presence_penalty) != (1.0, 0.0, 0.0):
            # Penalties look at the last 64 tokens, prompt included (as llama.cpp's server does).
            pen = ll.llama_sampler_init_penalties(64, sp.repetition_penalty,
                                                  sp.frequency_penalty, sp.presence_penalty)
            for t in req.prompt_tokens[-64:]:
                ll.llama_sampler_accept(pen, t)
            ll.llama_sampler_chain_add(chain, pen)
        if req.constraint is not None:
            # A GBNF grammar, compiled and parse-checked by gemmakit.tools.constraints.
            grammar = ll.llama_sampler_init_grammar(self._vocab, req.constraint.value.encode(),
                                                    b"root")
            if not grammar:
                ll.llama_sampler_free(chain)
                raise ValueError("llama.cpp refused the grammar")
            ll.llama_sampler_chain_add(chain, grammar)
        if sp.temperature == 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if sp.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(sp.top_k))
        if sp.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sp.top_p, 1))
        if sp.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(sp.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sp.temperature))
        seed = sp.seed if sp.seed is not None else int.from_bytes(os.urandom(4), "little")
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain


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


def _file_type_name(value: str | None) -> str | None:
    if value is None:
        return None
    with contextlib.suppress(ImportError, ValueError):
        from gguf import LlamaFileType

        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    return value
