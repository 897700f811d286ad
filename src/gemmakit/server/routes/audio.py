"""POST /v1/audio/transcriptions and /v1/audio/translations (OpenAI's multipart upload API), served
by a model with an audio tower (Gemma 3n) through the request pipeline (validation, content policy
on `prompt`, usage, metrics, cancellation on disconnect, like every generation route)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse

from gemmakit.errors import InvalidRequestError
from gemmakit.media.audio import FORMATS
from gemmakit.pipeline import AudioJob
from gemmakit.prompts.audio import Task
from gemmakit.server.routes.common import PIPELINE_ROUTE_MARK, begin
from gemmakit.types import AudioPart, SamplingParams

router = APIRouter()
log = logging.getLogger("gemmakit.server.audio")

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
_MIME_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav",
                 "audio/flac": "flac", "audio/x-flac": "flac", "audio/mpeg": "mp3",
                 "audio/mp3": "mp3", "audio/ogg": "ogg"}


def _format_of(upload: UploadFile) -> str:
    suffix = PurePath(upload.filename or "").suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    fmt = _MIME_FORMATS.get((upload.content_type or "").split(";")[0].strip().lower())
    if fmt is None:
        raise InvalidRequestError(
            f"cannot tell the audio format of '{(upload.filename or '')[:64]}' (supported: "
            f"{', '.join(sorted(FORMATS))}; name the file with its extension).", param="file")
    return fmt


def _duration(data: bytes) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # already validated by the engine; duration is informational only
        return None
    return round(info.frames / info.samplerate, 3) if info.samplerate else None


async def _run(task: Task, request: Request, file: UploadFile, model: str, language: str | None,
               prompt: str | None, response_format: str, temperature: float | None,
               keep_alive: str | None = None) -> Any:
    run = await begin(request, model, keep_alive)
    if response_format in ("srt", "vtt"):
        raise InvalidRequestError(f"response_format '{response_format}' needs timestamps, which "
                                  "this model does not produce; use json, text or verbose_json.",
                                  param="response_format")
    if language is not None and not re.fullmatch(r"[a-z]{2,3}", language):
        raise InvalidRequestError("language must be an ISO 639 code such as 'en'.",
                                  param="language")
    data = await file.read()
    if not data:
        raise InvalidRequestError("the uploaded file is empty.", param="file")
    # The audio API has no max_tokens: a transcript is bounded by a server setting instead.
    limit = request.app.state.settings.max_transcript_tokens
    sampling = SamplingParams(temperature=temperature if temperature is not None else 0.0,
                              max_tokens=limit)
    await run.audio(AudioJob(AudioPart(data, _format_of(file)), task, sampling,
                             language=language, prompt=prompt))
    (result,) = await run.collect()
    text = result.text.strip()
    if result.finish_reason == "length":
        log.warning("request %s: the transcript reached --max-transcript-tokens (%d)",
                    run.caller.request_id, limit)
    if response_format == "text":
        return PlainTextResponse(text)
    usage = run.usage
    out: dict[str, Any] = {"text": text,
                           "usage": {"type": "tokens", "input_tokens": usage.prompt_tokens,
                                     "output_tokens": usage.completion_tokens,
                                     "total_tokens": usage.total_tokens}}
    if response_format == "verbose_json":
        out = {"task": "transcribe" if task == "transcribe" else "translate",
               "language": language if task == "transcribe" and language else
               ("en" if task == "translate" else "unknown"),
               "duration": _duration(data), **out}
    return out


Upload = Annotated[UploadFile, Form()]
Str = Annotated[str, Form()]
OptStr = Annotated[str | None, Form()]
Fmt = Annotated[ResponseFormat, Form()]
Temp = Annotated[float | None, Form(ge=0.0, le=2.0)]


@router.post("/v1/audio/transcriptions", openapi_extra=PIPELINE_ROUTE_MARK)
async def transcriptions(request: Request, file: Upload, model: Str, language: OptStr = None,
                         prompt: OptStr = None, response_format: Fmt = "json",
                         temperature: Temp = None, keep_alive: OptStr = None) -> Any:
    return await _run("transcribe", request, file, model, language, prompt, response_format,
                      temperature, keep_alive)


@router.post("/v1/audio/translations", openapi_extra=PIPELINE_ROUTE_MARK)
async def translations(request: Request, file: Upload, model: Str, prompt: OptStr = None,
                       response_format: Fmt = "json", temperature: Temp = None,
                       keep_alive: OptStr = None) -> Any:
    return await _run("translate", request, file, model, None, prompt, response_format,
                      temperature, keep_alive)
