"""Prompt formats. Gemma-specific knowledge lives here (and in tools/parsers), nowhere else."""

from gemmakit.prompts.gemma import Prompt, Segment, render_chat, render_completion

__all__ = ["Prompt", "Segment", "render_chat", "render_completion"]
