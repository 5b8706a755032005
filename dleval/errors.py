"""The one exception type for bad user input: the CLI prints its message and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (unknown name, malformed value, missing file): one plain sentence."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str]) -> UserError:
    choices = sorted(choices)
    return UserError(f"unknown {kind} '{word}'{did_you_mean(word, choices)}; choose from: {', '.join(choices)}")
