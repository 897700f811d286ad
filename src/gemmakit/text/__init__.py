"""Turning token bytes into text that is safe to send: whole UTF-8 characters, no stop text."""

from gemmakit.text.stops import StopMatcher
from gemmakit.text.utf8 import Utf8Stream

__all__ = ["StopMatcher", "Utf8Stream"]
