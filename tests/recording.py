"""Test doubles for the threshold decoders (fastdllm, dparallel, eb): a call recorder and a fixed-logit model.

Imported by tests/test_fastdllm.py, tests/test_dparallel.py and tests/test_eb.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dleval.models.base import ForwardOutput, KVCache


@dataclass(frozen=True)
class Call:
    """One forward as the model saw it: where it started, how many positions, the cache it got."""

    start: int
    length: int
    cache_length: int | None
    logits: torch.Tensor  # (1, length, V)


class Recording:
    """Wraps a model and records every forward (the decoders never see the difference)."""

    def __init__(self, model) -> None:
        self.inner = model
        self.calls: list[Call] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        cache_length = None if cache is None else cache.length
        out = self.inner.forward(ids, start=start, cache=cache, attention_mask=attention_mask)
        self.calls.append(Call(start, int(ids.shape[1]), cache_length, out.logits.clone()))
        return out


class FixedLogits:
    """A fake denoiser whose logits depend only on the absolute position (a (T, V) table)."""

    mask_id, eos_id, eot_id = 1, 0, 2
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.vocab_size = table.shape[1]

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        logits = self.table[start : start + ids.shape[1]].expand(ids.shape[0], -1, -1).clone()  # (B, T, V)
        return ForwardOutput(logits=logits, kv=KVCache([], []))


def block_logits(call: Call, block_start: int, block_length: int) -> torch.Tensor:
    """The logits (1, B, V) a forward produced for the block [block_start, block_start+B)."""
    offset = block_start - call.start
    return call.logits[:, offset : offset + block_length]
