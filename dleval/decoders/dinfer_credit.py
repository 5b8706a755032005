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

from dleval.decoders import _dinfer
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
    def make_select() -> _dinfer.Select:
        credit: dict[int, torch.Tensor] = {}  # block start -> (1, b, V) credit matrix

        def select(logits: torch.Tensor, masked: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
            credit[start] = _dinfer.credit_update(logits, masked, credit.get(start), cfg.decay_beta, cfg.boost_gamma)
            fused = logits + cfg.credit_alpha * torch.log(credit[start] + 1)
            return _dinfer.threshold_rule(fused, masked, cfg.threshold, cfg.temperature, model.mask_id)

        return select

    return _dinfer.decode(model, prompts, cfg, make_select, on_step, seeds)
