"""`--compile`: a model whose forward runs through `torch.compile`, a drop-in `Model` (issue 14).

The wrapped forward computes the same function; on CPU the tokens are identical to eager (tested
in tests/test_compile.py on the tiny model), on CUDA bf16 kernels may round differently. Shapes
vary between forwards (a prefix-cache forward shrinks block by block, the cache grows), so
dynamo compiles a few shape-generic graphs (`dynamic=None`: the first recompile marks the
changing dimensions dynamic); past `torch._dynamo.config.cache_size_limit` recompiles it runs
eagerly, which is still correct. Compilation costs seconds to minutes up front, so it pays only
on long runs. On CUDA, the dual-cache block forward has one fixed shape per run, the natural
candidate for CUDA graphs (`mode="reduce-overhead"`, as dInfer does); that mode was not run here
(no GPU), so the default mode is used everywhere.
"""

from __future__ import annotations

import torch

from dleval.models.base import ForwardOutput, KVCache, Model


class Compiled:
    """Wraps a Model; `forward` is `torch.compile(model.forward)`. Other attributes pass through."""

    def __init__(self, model: Model, mode: str | None = None) -> None:
        self.inner = model
        self._forward = torch.compile(model.forward, dynamic=None, mode=mode)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ForwardOutput:
        return self._forward(ids, start=start, cache=cache, attention_mask=attention_mask)
