"""Sample + prompt style -> prompt text and token ids, with a hash of the rendering.

Three styles, the ones the dLLM papers mix (tasks.md §0.2, decoders.md §9.2):
- `raw`: lm-eval's plain text (few-shot exemplars joined by the delimiters, then the question);
- `chat`: that same text as one user turn in the tokenizer's chat template (Fast-dLLM,
  dParallel, lm-eval `--apply_chat_template` without `--fewshot_as_multiturn`);
- `chat_multiturn`: each exemplar a user/assistant pair (LLaDA's OpenCompass evaluation).
The spec's `gen_prefix` is appended after the generation prompt; `bos` prepends the tokenizer's
BOS id (Dream Base's `add_bos_token=true`; Qwen2-style tokenizers never add one themselves). The style and a hash of
everything that shaped the text (chat template included) are recorded with every score.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from dleval.types import Sample

STYLES = ("raw", "chat", "chat_multiturn")


@dataclass(frozen=True)
class Rendered:
    text: str
    ids: list[int]


def fewshot_text(sample: Sample, target_delimiter: str, fewshot_delimiter: str) -> str:
    return "".join(q + target_delimiter + a + fewshot_delimiter for q, a in sample.fewshot)


def messages(sample: Sample, style: str, target_delimiter: str, fewshot_delimiter: str, system: str = "") -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    if style == "chat_multiturn":
        for q, a in sample.fewshot:
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"role": "user", "content": sample.question})
    else:
        out.append({"role": "user", "content": fewshot_text(sample, target_delimiter, fewshot_delimiter) + sample.question})
    return out


def render(sample: Sample, prompt: Any, tokenizer: Any) -> Rendered:
    """`prompt` is a tasks.PromptSpec (duck-typed: style, delimiters, system, bos)."""
    rendered = _render(sample, prompt, tokenizer)
    if not getattr(prompt, "bos", False):
        return rendered
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError("bos=true, but this tokenizer has no BOS token")
    if rendered.ids[:1] == [bos]:  # a tokenizer that adds BOS itself: not twice
        return rendered
    return Rendered(str(tokenizer.bos_token) + rendered.text, [bos, *rendered.ids])


def _render(sample: Sample, prompt: Any, tokenizer: Any) -> Rendered:
    if prompt.style == "raw":
        text = fewshot_text(sample, prompt.target_delimiter, prompt.fewshot_delimiter) + sample.question + sample.gen_prefix
        return Rendered(text, list(tokenizer(text)["input_ids"]))
    if prompt.style not in STYLES:
        raise ValueError(f"unknown prompt style '{prompt.style}'")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; use -T style=raw")
    msgs = messages(sample, prompt.style, prompt.target_delimiter, prompt.fewshot_delimiter, prompt.system)
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + sample.gen_prefix
    return Rendered(text, list(tokenizer(text, add_special_tokens=False)["input_ids"]))


def template_hash(prompt: Any, tokenizer: Any) -> str:
    """sha256 (16 hex) of the prompt spec and, for chat styles, the tokenizer's chat template."""
    payload = {"prompt": asdict(prompt), "chat_template": getattr(tokenizer, "chat_template", None) if prompt.style != "raw" else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
