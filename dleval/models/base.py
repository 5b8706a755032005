"""The model contract every decoder talks to: `Model`, `KVCache`, and `Counted`.

A decoder sees only this file. `Model.forward` runs the bidirectional denoiser over some
positions of a canvas and returns logits plus the new positions' keys and values; the caller
decides what to keep in a `KVCache`. `Counted` wraps any model and is the one place where
forward passes (NFE) are counted (ARCHITECTURE §5: every call, cache builds and refreshes
included; a CFG pair batched into one call counts once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class KVCache:
    """Per-layer keys and values of canvas positions [0, length), after RoPE.

    Tensors are (B, H, T, head_dim). The operations are exactly what the cache strategies need:
    `keep` a prefix (Fast-dLLM prefix cache, refresh truncation), an in-place span overwrite
    (Fast-dLLM dual cache; done by `Model.forward` when `start < length`), `append` the first n
    new positions (d3LLM delayed caching), and rebuilding from a full forward's `kv`.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def keep(self, n: int) -> KVCache:
        """The cache of positions [0, n) only (views, no copy)."""
        return KVCache([k[:, :, :n] for k in self.keys], [v[:, :, :n] for v in self.values])

    def append(self, new: KVCache, n: int) -> KVCache:
        """This cache followed by the first n positions of `new` (the K/V a forward returned)."""
        return KVCache(
            [torch.cat([k, nk[:, :, :n]], dim=2) for k, nk in zip(self.keys, new.keys)],
            [torch.cat([v, nv[:, :, :n]], dim=2) for v, nv in zip(self.values, new.values)],
        )

    def clone(self) -> KVCache:
        """An independent copy, so that in-place span writes do not touch the original."""
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values])


@dataclass
class ForwardOutput:
    """Logits (B, T, V) for the forwarded positions and their fresh keys/values (length T)."""

    logits: torch.Tensor
    kv: KVCache


@runtime_checkable
class Model(Protocol):
    """A masked-diffusion denoiser plus the token ids decoders need.

    `forward(ids, start=s, cache=c)` processes tokens at absolute positions [s, s+T):
    - no cache: a full forward (s must be 0);
    - `start == cache.length`: the new positions attend to the cached prefix and to themselves;
    - `start < cache.length`: the span [s, s+T) lies inside the cache, its fresh K/V overwrite the
      cached ones in place, and attention runs over the whole cache (Fast-dLLM dual cache).
    `attention_mask` is (B, total_len) over key positions (False = left padding).

    Optional capability, announced by `custom_attention = True` (read it with getattr and a
    default): `positions` (T,) gives the absolute RoPE positions of the ids instead of
    [start, start+T), and `attention_mask` may be a per-query (B, T, total_len) bool mask. WINO's
    shadow block needs both (a copy of the current block at the block's positions, seeing the
    canvas but not its own position); `Counted` passes `positions` on only when it is given.
    `logit_shift` is True for Dream-style models whose logit at i-1 predicts token i; the
    implementation already undoes the shift, so logits[:, i] always predicts token i.

    Optional, set by `dleval.models.load` (read them with getattr and a default; fakes lack
    them): `folder`, the checkpoint folder (model-side state such as a Learn2PD filter lives
    there), and `encode(text) -> list[int]`, the tokenizer without special tokens.
    """

    mask_id: int
    eos_id: int
    eot_id: int | None
    vocab_size: int
    device: torch.device

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ForwardOutput: ...


class Counted:
    """Wraps a Model and counts its forward passes: the only NFE counter in dleval.

    `nfe` counts calls; `rows` counts sequences forwarded (batch rows, a CFG pair is two rows)
    and `positions` counts token positions processed, so cache savings are visible as data.

    Per sample: a decoder that forwards only some of its prompts (a batched decoder whose
    finished rows leave the batch) names them with `rows=` (indices into its `prompts`; see
    `dleval.decoders._parts.forward`); a call without `rows` counts for rows 0..B-1 of `ids`.
    `row_nfe(n)` is then, for each of the n prompts of the last decode, the number of forwards
    in which its tokens were computed, and `row_rows(n)` the sequences forwarded for it.
    """

    def __init__(self, model: Model) -> None:
        self.inner = model
        # One entry per forward: (sequences, token positions, the prompts named or None). The
        # counts are summed when read: a forward only appends (issue 14: the step stays thin).
        self._calls: list[tuple[int, int, list[int] | None]] = []

    def __getattr__(self, name: str):  # attributes such as mask_id come from the wrapped model
        return getattr(self.inner, name)

    @property
    def nfe(self) -> int:
        return len(self._calls)

    @property
    def rows(self) -> int:
        return sum(c[0] for c in self._calls)

    @property
    def positions(self) -> int:
        return sum(c[1] for c in self._calls)

    def reset(self) -> None:
        self._calls = []

    def row_nfe(self, n: int) -> list[int]:
        return self._per_row(n)[0]

    def row_rows(self, n: int) -> list[int]:
        return self._per_row(n)[1]

    def _per_row(self, n: int) -> tuple[list[int], list[int]]:
        nfe, rows = [0] * n, [0] * n
        for sequences, _, names in self._calls:
            names = range(sequences) if names is None else names
            per = sequences // max(len(names), 1)  # a CFG pair: two sequences for one prompt
            for r in names:
                if r < n:
                    nfe[r] += 1
                    rows[r] += per
        return nfe, rows

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        rows: list[int] | None = None,
    ) -> ForwardOutput:
        """`Model.forward`, counted; `rows` names the prompts whose rows `ids` holds (see the class)."""
        self._calls.append((ids.shape[0], ids.numel(), rows))
        if positions is None:  # models without the custom_attention capability lack the keyword
            return self.inner.forward(ids, start=start, cache=cache, attention_mask=attention_mask)
        return self.inner.forward(ids, start=start, cache=cache, attention_mask=attention_mask, positions=positions)
