"""Deciding on the host: the canvas and scores of the decoders that decode one prompt at a time
(wino, klass and dInfer's three).

Their references decide, after every forward, which of a few block positions to commit, from a
handful of numbers per position. Here each forward's scores are computed by torch, in the
reference's dtype, only for the span of the positions that need them (the first to the last
mask: a slice, cheaper than gathering rows); the few numbers a rule reads come back with
`.tolist()` (one synchronization per forward); the rule runs on Python lists; and the canvas is an
int64 array on the host (`Canvas.ids`) that the CPU tensor the model reads shares. A step is then
a dozen torch calls instead of thirty to forty (issue 14).

Scores for some rows are the same bits as for the whole block: softmax, log_softmax, max/argmax
and sums over the vocabulary are per row, and the elementwise exp and log are position
independent (tests/test_host.py checks both on the machine it runs on). `pow` on a CPU is not: its
kernel computes a contiguous tensor's tail with std::pow and the rest with SIMD, which can differ
in the last bit, so a power keeps the reference's layout (dinfer_credit's p ** gamma over the
whole block; `draft` draws the Gumbel noise over the whole block). A comparison of a tensor with a
Python number rounds the number to the tensor's dtype first (`_picks.as_dtype`, `f32`).
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Sequence

import torch

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import OnStep


def longs(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of `values` (not empty) on `device`; ~5x cheaper than torch.tensor(list)."""
    t = torch.frombuffer(array("q", values), dtype=torch.long)  # shares the array's memory (kept alive by the tensor)
    return t if device.type == "cpu" else t.to(device)


class Canvas:
    """One prompt's canvas [prompt | `length` masks]: `ids`, an int64 array the decoder reads and
    writes on the host, and `x`, the (1, N) long tensor the model reads. On the CPU `x` shares
    `ids`' memory, so a write to `ids` is a write to the canvas; elsewhere `push()` copies `ids`
    to the device (call it after writing). P is the prompt length: the generation is ids[P:]
    (the canvas is never resized: its memory is exported to `x`)."""

    def __init__(self, model: Model, prompt: Sequence[int], length: int) -> None:
        mask_id = model.mask_id
        if mask_id in prompt:
            raise ValueError("a prompt contains the mask token id")  # as _parts.make_canvas
        self.ids = array("q", [*prompt, *[mask_id] * length])
        self.P, self.N = len(prompt), len(self.ids)
        self.device = torch.device(model.device)
        self.shared = self.device.type == "cpu"
        self.x = torch.frombuffer(self.ids, dtype=torch.long).view(1, -1)
        if not self.shared:
            self.x = self.x.to(self.device)

    def push(self) -> None:
        """The device canvas <- ids (nothing to do on the CPU, where they share memory)."""
        if not self.shared:
            self.x[0].copy_(torch.frombuffer(self.ids, dtype=torch.long))

    def report(self, on_step: OnStep | None, nfe: int, committed: Sequence[int], end: int | None = None) -> None:
        """`on_step` (when someone listens) with the canvas x[:, :end] and the positions committed."""
        if on_step is not None:
            x = self.x[:, :end]
            step = torch.zeros_like(x, dtype=torch.bool)
            if committed:
                step[0, longs(committed, self.device)] = True
            _parts.report_step(on_step, nfe, x, step)


def span(at: Sequence[int], lo: int, hi: int) -> tuple[int, int]:
    """The index range [i, j) of the increasing list `at` whose values lie in [lo, hi)."""
    return bisect_left(at, lo), bisect_left(at, hi)


def draft(
    rows: torch.Tensor, temperature: float, mask_id: int, logits: torch.Tensor | None = None, s: int = 0, e: int = 0, lo: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """x0 (1, w, 1) and as a list: `_parts.propose` for `rows` (1, w, V) = logits[:, lo:lo + w],
    rows of the block logits[:, s:e].

    At T = 0 the argmax of `rows`: argmax returns the first maximum, so when that is not [MASK] it
    is also the first maximum of the other tokens, and only a row that ranks [MASK] first (a
    random model) needs the [MASK] logit set to -inf (in `rows`, in place) and a second argmax. At
    T > 0 the reference draws its Gumbel noise over the whole block (the draws and the
    position-dependent pow must match it), so the block is perturbed whole (its [MASK] logit is
    written too) and its rows [lo, lo + w) are kept."""
    if temperature == 0:
        x0 = rows.argmax(dim=-1, keepdim=True)
        tokens = [t for (t,) in x0.tolist()[0]]
        if mask_id not in tokens:
            return x0, tokens
        x0 = _parts.propose_(rows, 0.0, mask_id).unsqueeze(-1)
    else:
        assert logits is not None
        x0 = _parts.propose_(logits[:, s:e], temperature, mask_id)[:, lo - s : lo - s + rows.shape[1]].unsqueeze(-1)
    return x0, [t for (t,) in x0.tolist()[0]]


def f32(value: float) -> float:
    """`value` rounded to float32 (round to nearest even), as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]
