"""Instructions for Gemma 3n's audio tasks (`process_audio(task=...)`, the audio API): speech
recognition and speech translation into English, as one user turn holding the audio and the instruction.
Gemma 3n reads the audio placeholder first, then the instruction, as in Google's examples."""

from __future__ import annotations

from typing import Literal

from gemmakit.types import AudioPart, Message, TextPart

Task = Literal["transcribe", "translate"]


def audio_task_messages(audio: AudioPart, task: Task, *, language: str | None = None,
                        prompt: str | None = None) -> list[Message]:
    """One user message: the audio, then what to do with it."""
    if task == "transcribe":
        instruction = "Transcribe this audio exactly as spoken"
        if language:
            instruction += f" (the speech is in the language with ISO 639 code '{language}')"
        instruction += ". Reply with the transcript only."
    else:
        instruction = ("Translate the speech in this audio into English. Reply with the English "
                       "translation only.")
    if prompt:
        instruction += f"\n\nContext (previous text, names and terms): {prompt}"
    return [Message("user", [audio, TextPart(instruction)])]
