"""The transformers engine: Hugging Face checkpoints (safetensors folders; GGUF files dequantised once
into a cached dense folder) through PyTorch, with images (Gemma 3) and audio (Gemma 3n).

One worker thread owns the model and runs one sequence at a time: a prefill forward over the whole
prompt (with the media features), then one forward per token over the KV cache. Sampling
(`gemmakit.hf.sampling`) mirrors the llama.cpp engine's chain; token bytes become text through the
same UTF-8 and stop-sequence rules (`gemmakit.text`). The event loop only receives finished chunks.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    InvalidRequestError,
    UnsupportedError,
)
from gemmakit.hf.pieces import TokenPieces
from gemmakit.media import MediaLimits
from gemmakit.profiles import ProfileRow
from gemmakit.types import (
    AudioPart,
    Capabilities,
    Chunk,
    EngineHealth,
    GenerationRequest,
    ImagePart,
    MediaEncoding,
    Part,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.finetune.store import Adapter
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.engine.transformers")

SCORE_ROWS = 64
"""A scored prompt (`prompt_logprobs`) is prefilled in chunks of this many tokens, so that its
float logits (1 MB a position over Gemma's 262k vocabulary) never all exist at once."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("the transformers engine needs the hf extra: "
                          "pip install 'gemmakit[hf]'") from e
    return torch


class TransformersEngine(Engine):
    """A transformers model on CPU or CUDA. Construct with `from_settings` (blocking)."""

    name = "transformers"

    def __init__(self, path: str | Path, *, context_length: int | None = None,
                 threads: int | None = None, profile: str | None = None,
                 media_limits: MediaLimits | None = None, pan_and_scan: bool = False,
                 device: str | None = None) -> None:
        torch = _torch()
        from gemmakit.hf import loading
        from gemmakit.hf.profiles import transformers_plan

        self.path = Path(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        plan = transformers_plan(profile, self.device)
        self.profile = plan
        loaded = loading.load(self.path, dtype=plan.dtype, device=self.device,
                              quantization_config=plan.quantization_config())
        self.model, self.tokenizer, self.processor = loaded.model, loaded.tokenizer, \
            loaded.processor
        self.notes = loaded.notes
        for note in loaded.notes:
            log.warning("%s: %s", self.path.name, note)
        tcfg = loading.text_config(loaded.config)
        self.n_vocab = int(tcfg.vocab_size)
        template = self.tokenizer.chat_template
        self.chat_template = template if isinstance(template, str) else None
        self.trained_context_length = int(tcfg.max_position_embeddings)
        self.context_length = context_length or self.trained_context_length
        self.capabilities = Capabilities(text=True, vision=loaded.vision, audio=loaded.audio,
                                         lora=True)
        # LoRA adapters (PEFT): the model is wrapped once the first one loads; the worker holds
        # the lock for each request, loading and unloading take it between requests.
        self._adapters: set[str] = set()
        self._model_lock = threading.Lock()
        self.media_limits = media_limits or MediaLimits()
        self.pan_and_scan = pan_and_scan
        self.image_token_id = getattr(loaded.config, "image_token_id", None)

        # End-of-generation tokens: the tokenizer's EOS and the checkpoint's generation config.
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eog_ids = frozenset(t for t in eos if isinstance(t, int))
        self._pieces = TokenPieces(self.tokenizer)  # control tokens render as nothing

        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._running: Pending | None = None
        self._closed = False
        self._failed: str | None = None
        self._worker = threading.Thread(target=self._run, name="gemmakit-transformers",
                                        daemon=True)
        self._worker.start()

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> TransformersEngine:
        from gemmakit.hf.checkpoint import check_hf_folder, dense_from_gguf

        if model.format == "gguf":
            path = dense_from_gguf(model.path, settings.home)
        else:
            check_hf_folder(model.path)
            path = model.path
        return cls(path, context_length=settings.context_length, threads=settings.threads,
                   profile=settings.profile, media_limits=MediaLimits.from_settings(settings),
                   pan_and_scan=settings.pan_and_scan)

    # --- loading profiles (hf/profiles.py) ------------------------------------------------------
    @classmethod
    def plan_profile(cls, model: ModelRef, profile: str) -> str:
        from gemmakit.hf.profiles import default_device, transformers_plan

        return transformers_plan(profile, default_device()).summary

    @classmethod
    def profile_table(cls, model: ModelRef, home: Path) -> list[ProfileRow]:
        from gemmakit.hf.checkpoint import check_hf_folder, dense_from_gguf
        from gemmakit.hf.profiles import profile_table

        if model.format == "gguf":
            return profile_table(dense_from_gguf(model.path, home))
        check_hf_folder(model.path)
        return profile_table(model.path)

    @classmethod
    def measure_profile(cls, row: dict[str, Any], *, threads: int | None = None
                        ) -> dict[str, Any]:
        from gemmakit.hf.profiles import measure

        return measure(row["folder"], row["profile"], threads=threads)

    # --- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`, never adding BOS. `special`: parse control-token markup."""
        from gemmakit.hf.loading import tokenize

        return tokenize(self.tokenizer, text, special=special)

    def token_piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        return self._pieces.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._pieces.text(tokens)

    # --- media ----------------------------------------------------------------------------
    def encode_media(self, part: Part) -> MediaEncoding:
        """Decode and preprocess one image or audio part; the tokens that replace its placeholder.
        Raises InvalidRequestError / UnsupportedError (the caller names the part)."""
        if isinstance(part, ImagePart):
            return self._encode_image(part)
        if isinstance(part, AudioPart):
            return self._encode_audio(part)
        raise InvalidRequestError("not a media part")

    def _encode_image(self, part: ImagePart) -> MediaEncoding:
        from gemmakit.media.images import decode_image

        if not self.capabilities.vision:
            raise UnsupportedError("this model has no vision: it cannot take image input"
                                   + ("" if not self.notes else f" ({self.notes[0]})"))
        assert self.processor is not None  # a model with vision has one
        image = decode_image(part, self.media_limits)
        kwargs = {"do_pan_and_scan": True} if self.pan_and_scan else {}
        feats = self.processor.image_processor([image], return_tensors="pt", **kwargs)
        text = self.processor.replace_image_token(feats, 0)
        return MediaEncoding(tuple(self.tokenize(text, special=True)),
                             {"pixel_values": feats["pixel_values"]})

    def _encode_audio(self, part: AudioPart) -> MediaEncoding:
        from gemmakit.media.audio import decode_audio

        if not self.capabilities.audio:
            raise UnsupportedError("this model has no audio tower: it cannot take audio input")
        assert self.processor is not None  # a model with an audio tower has one
        fe = self.processor.feature_extractor
        limit = min(self.media_limits.max_audio_seconds,
                    getattr(fe, "n_samples", 480_000) / fe.sampling_rate)
        wave = decode_audio(part, MediaLimits(**{**self.media_limits.__dict__,
                                                  "max_audio_seconds": limit}),
                            fe.sampling_rate)
        feats = fe([wave], return_tensors="pt", truncation=False)
        text = self.processor.replace_audio_token(feats, 0)
        return MediaEncoding(tuple(self.tokenize(text, special=True)),
                             {"input_features": feats["input_features"],
                              "input_features_mask": feats["input_features_mask"]})

    # --- generation -----------------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate one sequence. Cancelling the consuming task stops it at the next token."""
        if self._failed:
            raise EngineError("the engine stopped after an internal error")
        if self._closed:
            raise EngineError("the engine is shut down")
        if request.adapter is not None and request.adapter not in self._adapters:
            raise InvalidRequestError(f"the adapter '{request.adapter}' is not loaded",
                                      param="model")
        max_tokens = generation_budget(request, self.context_length)
        job = Pending(request=request, loop=asyncio.get_running_loop(), out=asyncio.Queue(),
                   max_tokens=max_tokens)
        self._queue.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True  # no-op if finished; otherwise the worker stops at its next token

    def health(self) -> EngineHealth:
        if self._failed:
            return EngineHealth(ok=False, detail=self._failed)
        return EngineHealth(ok=self._worker.is_alive() and not self._closed,
                            requests_running=1 if self._running else 0,
                            requests_waiting=self._queue.qsize())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._worker.join)

    # --- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        torch = _torch()
        try:
            while (job := self._queue.get()) is not None:
                if job.cancelled:
                    continue
                self._running = job
                try:
                    with self._model_lock, self._adapter_set(job.request.adapter), \
                            torch.inference_mode():
                        self._generate(job)
                except (InvalidRequestError, UnsupportedError) as e:
                    job.emit(e)
                except Exception:
                    # A failed forward pass leaves nothing shared behind (the KV cache is the
                    # request's own): fail this request loudly, keep serving the others.
                    log.exception("generation failed for request %s", job.request.request_id)
                    job.emit(EngineError("generation failed inside the engine"))
                finally:
                    self._running = None
        except BaseException as e:  # the worker itself died: say so on /health
            log.exception("transformers worker failed")
            self._failed = type(e).__name__
            if self._running is not None:
                self._running.emit(EngineError("generation failed inside the engine"))
        finally:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.emit(EngineError("the engine is shut down"))

    # --- LoRA adapters --------------------------------------------------------------------
    def load_adapter(self, adapter: Adapter) -> None:
        """Load a stored PEFT adapter under its name (PEFT multi-adapter; blocking)."""
        from peft import PeftModel

        with self._model_lock:
            if isinstance(self.model, PeftModel):
                if adapter.name in self._adapters:
                    self.model.delete_adapter(adapter.name)
                self.model.load_adapter(str(adapter.path), adapter_name=adapter.name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter.path),
                                                       adapter_name=adapter.name)
            self.model.eval()
            self._adapters.add(adapter.name)
        log.info("adapter %s loaded", adapter.name)

    def unload_adapter(self, name: str) -> None:
        with self._model_lock:  # waits for the running request: none uses it after this
            if name not in self._adapters:
                raise InvalidRequestError(f"the adapter '{name}' is not loaded", param="lora_name")
            self.model.delete_adapter(name)
            self._adapters.discard(name)

    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def _adapter_set(self, name: str | None) -> Any:
        """A context in which the model runs with adapter `name` (None: the base alone). PEFT
        runs one adapter at a time, and this engine one sequence at a time."""
        import contextlib

        if not self._adapters:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        if name not in self._adapters:
            raise InvalidRequestError(f"the adapter '{name}' is not loaded", param="model")
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _prefill_inputs(self, req: GenerationRequest) -> dict[str, Any]:
        """Forward arguments for the prompt: token ids plus the media features, batched."""
        torch = _torch()
        ids = torch.tensor([req.prompt_tokens], device=self.model.device)
        inputs: dict[str, Any] = {"input_ids": ids}
        media: list[dict[str, Any]] = [f for f in req.media_features if isinstance(f, dict)]
        pixels = [f["pixel_values"] for f in media if "pixel_values" in f]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels).to(self.model.device, self.model.dtype)
            if self.image_token_id is not None:
                # Image tokens attend to each other bidirectionally (Gemma 3's mask).
                inputs["token_type_ids"] = (ids == self.image_token_id).long()
        audio = [f for f in media if "input_features" in f]
        if audio:
            longest = max(f["input_features"].shape[1] for f in audio)
            feats, masks = [], []
            for f in audio:  # (1, frames, mel) each, padded to the longest clip
                pad = longest - f["input_features"].shape[1]
                feats.append(torch.nn.functional.pad(f["input_features"], (0, 0, 0, pad)))
                masks.append(torch.nn.functional.pad(f["input_features_mask"], (0, pad),
                                                      value=False))
            inputs["input_features"] = torch.cat(feats).to(self.model.device, self.model.dtype)
            inputs["input_features_mask"] = torch.cat(masks).to(self.model.device)
        return inputs

    def _forward(self, **inputs: Any) -> tuple[Any, Any]:
        """One forward pass; the float32 logits of the last position, shape (n_vocab,)."""
        out = self.model(use_cache=True, logits_to_keep=1, **inputs)
        return out.logits[0, -1].float().cpu(), out.past_key_values

    def _generate(self, job: Pending) -> None:
        from gemmakit.hf.sampling import Sampler

        torch = _torch()
        req = job.request
        sp = req.sampling
        stop_ids = self.eog_ids | req.stop_token_ids
        sampler = Sampler(sp, req.prompt_tokens, self.n_vocab,
                          banned=stop_ids if sp.ignore_eos else frozenset())
        token_text = TokenText(sp.stop, job.max_tokens)
        t_start = time.perf_counter()
        scored: list[TokenLogprob] | None = None
        if sp.prompt_logprobs is None:
            logits, cache = self._forward(**self._prefill_inputs(req))
        else:
            logits, cache, scored = self._prefill_scored(req, sp.prompt_logprobs)
        t_first: float | None = None
        generated = 0
        if job.max_tokens == 0:  # the prompt scored, nothing to generate
            job.emit(Chunk(finish_reason="length", prompt_logprobs=scored, stats=finish_stats(
                prompt_tokens=len(req.prompt_tokens), completion_tokens=0,
                t_submit=job.t_submit, t_start=t_start, t_first=None,
                now=time.perf_counter())))
            return
        while not job.cancelled:
            logprob = self._logprob_fn(logits, sp.top_logprobs) if sp.logprobs else None
            token = sampler(logits)
            now = time.perf_counter()
            t_first = t_first or now
            generated += 1
            chunk = Chunk(token_ids=[token], prompt_logprobs=scored)
            scored = None
            if logprob is not None:
                chunk.logprobs.append(logprob(token))
            stop = token in stop_ids and not sp.ignore_eos  # no text of its own
            text, finish = token_text.feed(None if stop else self.token_piece(token))
            chunk.text = text
            if finish is not None:
                chunk.finish_reason = finish
                chunk.stats = finish_stats(prompt_tokens=len(req.prompt_tokens),
                                           completion_tokens=generated, t_submit=job.t_submit,
                                           t_start=t_start, t_first=t_first, now=now)
                job.emit(chunk)
                return
            job.emit(chunk)
            logits, cache = self._forward(
                input_ids=torch.tensor([[token]], device=self.model.device),
                past_key_values=cache)

    def _prefill_scored(self, req: GenerationRequest, top_n: int
                        ) -> tuple[Any, Any, list[TokenLogprob]]:
        """The prompt's forward with its logits at every position: the last position's logits,
        the cache, and the logprob of every prompt token after the first. A text prompt goes in
        chunks of SCORE_ROWS over the cache; one with media in a single pass (its image tokens
        attend to each other, so it cannot be split)."""
        torch = _torch()
        ids = req.prompt_tokens
        inputs = self._prefill_inputs(req)
        scored: list[TokenLogprob] = []
        step = SCORE_ROWS if len(inputs) == 1 else len(ids)
        cache = None
        last = None
        for start in range(0, len(ids), step):
            chunk_inputs = inputs if step == len(ids) else {
                "input_ids": torch.tensor([ids[start:start + step]], device=self.model.device)}
            out = self.model(use_cache=True, logits_to_keep=0, past_key_values=cache,
                             **chunk_inputs)
            cache = out.past_key_values
            rows = out.logits[0].float().cpu()
            targets = ids[start + 1:start + step + 1]
            last = rows[-1].clone()
            scored += scored_tokens(rows[:len(targets)].numpy(), targets, top_n,
                                    self.token_piece, in_place=True)
        return last, cache, scored

    def _logprob_fn(self, logits: Any, top_n: int):
        """Log-probabilities of the raw distribution (before sampling transforms, as the llama.cpp
        engine reports them); returns a function of the chosen token."""
        torch = _torch()
        lp = torch.log_softmax(logits.double(), dim=-1)
        top = torch.topk(lp, top_n).indices.tolist() if top_n else []

        def entry(tok: int) -> TopLogprob:
            piece = self.token_piece(tok)
            return TopLogprob(piece.decode("utf-8", "replace"), float(lp[tok]), list(piece))

        def chosen(token: int) -> TokenLogprob:
            e = entry(token)
            return TokenLogprob(e.token, e.logprob, e.bytes, tuple(entry(t) for t in top))

        return chosen


def describe(path: str | Path) -> dict[str, object]:
    """Facts for `gemmakit models` about an HF folder, from its config.json."""
    from transformers import AutoConfig

    from gemmakit.hf.loading import text_config

    config = AutoConfig.from_pretrained(path)
    modalities = ["text"] + [m for m, key in (("image", "vision_config"), ("audio", "audio_config"))
                             if hasattr(config, key)]
    return {"architecture": config.model_type,
            "context_length": text_config(config).max_position_embeddings,
            "modalities": modalities}
