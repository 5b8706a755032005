"""Answer extraction and matching: lm-eval's GSM8K filters, stop-string cutting, exact match.

GSM8K follows lm-evaluation-harness (gsm8k*.yaml, v3.0; tasks.md §1.3) exactly:
- strict-match: a task-specific regex (e.g. `#### (\\-?[0-9\\.\\,]+)`), first match, first group;
- flexible-extract: `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the last match, its first non-empty group;
- no match gives "[invalid]"; extracted strings are stripped;
- exact_match deletes `,`, `\\$`, `(?s).*#### ` and `\\.$` from prediction and reference, lowercases
  both, and compares the strings.
The `\\boxed{}` filter (dParallel/d3LLM instruction) takes the content of the last `\\boxed{...}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

INVALID = "[invalid]"
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """Text up to the earliest occurrence of any stop string (lm-eval `until`)."""
    end = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1:
                end = min(end, i)
    return text[:end]


def _group(match: re.Match[str]) -> str:
    if match.groups():
        found = [g for g in match.groups() if g]
        return found[0] if found else ""
    return match.group(0)


def regex_extract(text: str, pattern: str, select: int = 0) -> str:
    """lm-eval RegexFilter: match `select` (0 first, -1 last), first non-empty group, stripped."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return INVALID
    return _group(matches[select]).strip()


def boxed_extract(text: str) -> str:
    """Content of the last \\boxed{...}, braces balanced; "[invalid]" if none."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return INVALID
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return INVALID


def normalize(answer: str) -> str:
    for pattern in _IGNORE:
        answer = pattern.sub("", answer)
    return answer.lower()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def gsm8k_extract(text: str, filters: Sequence[str], strict_pattern: str = GSM8K_STRICT) -> dict[str, str]:
    """{filter name: extracted answer} for the named filters."""
    out: dict[str, str] = {}
    for name in filters:
        if name == "strict-match":
            out[name] = regex_extract(text, strict_pattern, 0)
        elif name == "flexible-extract":
            out[name] = regex_extract(text, FLEXIBLE, -1)
        elif name == "boxed":
            out[name] = boxed_extract(text)
        else:
            raise ValueError(f"unknown GSM8K filter '{name}'")
    return out
