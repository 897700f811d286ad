"""The Python API: `gemmakit.load(model, engine=..., profile=...)` returns a `Gemma` that runs the
same pipeline as the server (same validation, media limits, usage counts), in-process.

    import gemmakit
    gemma = gemmakit.load("gemma-3-270m")                       # llama.cpp on the bundled GGUF
    print(gemma.chat("Say hi").text)
    for piece in gemma.stream_chat([{"role": "user", "content": "Count to 3"}], max_tokens=20):
        print(piece, end="")
    g3n = gemmakit.load("./gemma-3n", engine="transformers")
    g3n.transcribe("clip.wav", language="en")

Every method has an async form (`achat`, `astream_chat`, `atranscribe`, `atranslate`); the sync
forms run them on a private event-loop thread, so they also work inside a running event loop.
`generate_async(messages, config, multimodal_input)` takes sampling settings as a mapping and media
parts beside the messages.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmakit.errors import InvalidRequestError
from gemmakit.pipeline import ChatJob
from gemmakit.types import (
    AudioPart,
    EngineHealth,
    FinishReason,
    ImagePart,
    Message,
    Part,
    SamplingParams,
    TextPart,
)

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline
    from gemmakit.service import Service
    from gemmakit.settings import Settings

MessagesLike = str | Sequence[Message | Mapping[str, Any]]


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int


def load(model: str = "gemma-3-270m", *, engine: str = "llamacpp", profile: str | None = None,
         **settings: Any) -> Gemma:
    """Load `model` (a catalog alias, a .gguf file or a Hugging Face folder) with `engine`
    (blocking). Extra keyword arguments are `Settings` fields (context_length, threads, home,
    policy…): requests go through the same pipeline as the server's (validation, content
    policy, usage counts), without keys or a usage ledger."""
    from gemmakit import compose
    from gemmakit.settings import Settings

    s = Settings.load(model=model, engine=engine, profile=profile, **settings)
    return Gemma(compose.load(s), s)


def _to_messages(messages: MessagesLike) -> list[Message]:
    if isinstance(messages, str):
        return [Message("user", messages)]
    if all(isinstance(m, Message) for m in messages):
        return list(messages)  # type: ignore[arg-type]
    from gemmakit.server.protocol import ChatCompletionRequest

    dicts = [m if isinstance(m, Mapping) else _message_dict(m) for m in messages]
    return ChatCompletionRequest.model_validate({"model": "-", "messages": dicts}).to_messages()


def _message_dict(m: Message) -> dict[str, Any]:
    if not isinstance(m.content, list):
        return {"role": m.role, "content": m.content}
    raise InvalidRequestError("mix Message objects with media parts only as a list of Message")


def _audio_part(audio: bytes | str | Path, fmt: str | None) -> AudioPart:
    if isinstance(audio, (str, Path)):
        path = Path(audio)
        return AudioPart(path.read_bytes(), fmt or path.suffix.lstrip(".").lower())
    if fmt is None:
        raise InvalidRequestError("give the audio format (wav, flac, mp3, ogg) with raw bytes",
                                  param="format")
    return AudioPart(bytes(audio), fmt)


class Gemma:
    """One loaded model. Thread-safe; close it (or use `with`) to free the engine."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.pipeline.model_name

    @property
    def service(self) -> Service:
        return self.pipeline.service

    # --- async ------------------------------------------------------------------------------
    async def achat(self, messages: MessagesLike, **sampling: Any) -> ChatResult:
        run = self.pipeline.begin()
        await run.chat(ChatJob(_to_messages(messages), SamplingParams(**sampling)))
        (result,) = await run.collect()
        return ChatResult(result.text, result.finish_reason, run.usage.prompt_tokens,
                          run.usage.completion_tokens)

    async def astream_chat(self, messages: MessagesLike, **sampling: Any) -> AsyncIterator[str]:
        run = self.pipeline.begin()
        await run.chat(ChatJob(_to_messages(messages), SamplingParams(**sampling)))
        async for d in run.stream():
            if d.text:
                yield d.text

    async def aprocess_audio(self, audio: bytes | str | Path, task: str = "transcribe", *,
                             format: str | None = None, language: str | None = None,
                             prompt: str | None = None, **sampling: Any) -> str:
        """Transcribe (`task="transcribe"`) or translate into English (`"translate"`) a clip: a
path, or bytes with their `format`."""
        from gemmakit.prompts.audio import audio_task_messages

        if task not in ("transcribe", "translate"):
            raise InvalidRequestError("task must be 'transcribe' or 'translate'", param="task")
        sampling.setdefault("temperature", 0.0)
        sampling.setdefault("max_tokens", self.settings.max_transcript_tokens)
        msgs = audio_task_messages(_audio_part(audio, format), task,  # type: ignore[arg-type]
                                   language=language, prompt=prompt)
        return (await self.achat(msgs, **sampling)).text.strip()

    async def atranscribe(self, audio: bytes | str | Path, **kw: Any) -> str:
        return await self.aprocess_audio(audio, "transcribe", **kw)

    async def atranslate(self, audio: bytes | str | Path, **kw: Any) -> str:
        return await self.aprocess_audio(audio, "translate", **kw)

    async def generate_async(self, messages: MessagesLike, config: Mapping[str, Any] | None = None,
                             multimodal_input: Sequence[Part] | None = None) -> ChatResult:
        """A chat turn where `config` holds the sampling parameters and `multimodal_input`
        (ImagePart / AudioPart) is appended to the last user message."""
        msgs = _to_messages(messages)
        if multimodal_input:
            last = msgs[-1]
            content: list[Part] = [TextPart(last.content)] if isinstance(last.content, str) \
                else list(last.content or [])
            for p in multimodal_input:
                if not isinstance(p, (ImagePart, AudioPart, TextPart)):
                    raise InvalidRequestError("multimodal_input takes ImagePart / AudioPart",
                                              param="multimodal_input")
                content.append(p)
            msgs[-1] = Message(last.role, content)
        return await self.achat(msgs, **dict(config or {}))

    async def aclose(self) -> None:
        await self.pipeline.aclose()

    # --- sync ---------------------------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                name="gemmakit-api", daemon=True)
                self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def chat(self, messages: MessagesLike, **sampling: Any) -> ChatResult:
        return self._run(self.achat(messages, **sampling))

    def stream_chat(self, messages: MessagesLike, **sampling: Any) -> Iterator[str]:
        """Text pieces as they are generated. Leaving the loop early cancels the generation."""
        q: queue.Queue[tuple[str, Any]] = queue.Queue()

        async def pump() -> None:
            try:
                async for piece in self.astream_chat(messages, **sampling):
                    q.put(("piece", piece))
            except BaseException as e:  # handed to the consuming thread
                q.put(("error", e))
                return
            q.put(("end", None))

        self._run(asyncio.sleep(0))  # start the loop thread
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                kind, value = q.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            fut.cancel()

    def process_audio(self, audio: bytes | str | Path, task: str = "transcribe",
                      **kw: Any) -> str:
        return self._run(self.aprocess_audio(audio, task, **kw))

    def transcribe(self, audio: bytes | str | Path, **kw: Any) -> str:
        return self._run(self.atranscribe(audio, **kw))

    def translate(self, audio: bytes | str | Path, **kw: Any) -> str:
        return self._run(self.atranslate(audio, **kw))

    def health(self) -> EngineHealth:
        return self.pipeline.engine.health()

    def close(self) -> None:
        if self._loop is not None:
            self._run(self.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        else:
            asyncio.run(self.aclose())

    def __enter__(self) -> Gemma:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
