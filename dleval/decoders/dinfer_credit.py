"""dInfer's credit decoder: the threshold rule on logits fused with a per-block EMA credit of past argmaxes.

Source: Ma et al., "dInfer" (arXiv 2510.08666); inclusionAI/dInfer @fce4e32
`python/dinfer/decoding/parallel_strategy.py` (`CreditThresholdParallelDecoder`,
`_apply_credit_fusion`) driven by `generate_uniform.py` (`BlockWiseDiffusionLLM`) as
`benchmarks/benchmark.py --use_credit` builds it; spec decoders.md §7.6. Each block keeps a
credit matrix C (block, V), float32: at each of the block's forwards C <- decay_beta * C (from
the second on), then C[i, argmax_i] += p_max,i ** boost_gamma at every masked position i; the
threshold rule of `dinfer` then runs on z + credit_alpha * log(1 + C). The matrix is state across
forwards: a fresh one per block and per prompt, inside one decode() call (the reference keys it
by block span and clears it when the canvas has no mask left, which is the same thing).

The loop (block alignment, unrolled groups whose idle forwards count as NFE, the EOS stop), the
differences from the reference shared by the three dInfer decoders, and why one prompt is decoded
at a time: `_dinfer.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _dinfer, _host
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
IDLE_FORWARDS = True  # forwards after a block completes inside an unroll group commit nothing (see above)


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # ours: the common LLaDA baseline (decoders.md §9.1); benchmark.py uses 1024
    block_length: int = 32  # README example 3 (LLaDA-8B-Instruct): --block_length 32
    threshold: float = 0.9  # README example 3 / benchmark.py --threshold 0.9
    credit_alpha: float = 0.7  # CreditThresholdParallelDecoder default
    boost_gamma: float = 0.2  # CreditThresholdParallelDecoder default
    decay_beta: float = 0.8  # CreditThresholdParallelDecoder default
    maximum_unroll: int = 4  # BlockWiseDiffusionLLM default
    expected_tpf: int = 8  # BlockWiseDiffusionLLM default
    temperature: float = 0.0  # benchmark.py builds every decoder with temperature=0

    def __post_init__(self) -> None:
        _dinfer.check_config(self, ("threshold", "boost_gamma", "decay_beta"))
        if not self.credit_alpha >= 0:  # NaN fails too
            raise ValueError(f"credit_alpha must be >= 0, not {self.credit_alpha}")


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    return _dinfer.decode(model, prompts, cfg, lambda: _Credit(cfg, model.mask_id), on_step, seeds)


class _Credit:
    """The credit rule and its state for one prompt: the current block's credit matrix (1, b, V).

    The matrix is updated on every row of the block, masked or not (the reference boosts only the
    masked rows): a row evolves on its own (every update is row-wise) and a committed position's
    row is never read again, so the masked rows hold the reference's values bit for bit. The
    fused logits are taken for the span of the masks only. The matrix keeps the reference's
    (1, b) layout for p ** gamma, whose CPU kernel is position dependent (`_host`)."""

    def __init__(self, cfg: Config, mask_id: int) -> None:
        self.cfg, self.mask_id, self.threshold = cfg, mask_id, _host.f32(cfg.threshold)
        self.start = -1
        self.credit: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, s: int, e: int, at: list[int]) -> tuple[list[int], list[bool]]:
        cfg = self.cfg
        block = logits[:, s:e]  # (1, b, V)
        if s != self.start:  # a new block, a fresh matrix (the reference keys it by the block's span)
            self.start, self.credit = s, None
        self.credit = _dinfer.credit_update(block, None, self.credit, cfg.decay_beta, cfg.boost_gamma)
        lo, hi = at[0] - s, at[-1] + 1 - s  # fused logits and scores for the span of the masks only
        fused = torch.log(self.credit[:, lo:hi] + 1).mul_(cfg.credit_alpha).add_(block[:, lo:hi])  # = z + alpha * log(C + 1), bit for bit
        whole = None  # at T > 0 the noise is drawn over the whole block: its fused logits (1, b, V)
        if cfg.temperature > 0:
            whole = torch.log(self.credit + 1).mul_(cfg.credit_alpha).add_(block)
        x0, conf = _dinfer.threshold_scores(fused, cfg.temperature, self.mask_id, whole, 0, e - s, lo)
        return [x0[j - s - lo] for j in at], _dinfer.threshold_pick([conf[j - s - lo] for j in at], self.threshold)
