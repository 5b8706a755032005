"""dInfer's hierarchy decoder: the best mask of each run of adjacent masks (above low_threshold), plus every mask above threshold.

Source: Ma et al., "dInfer" (arXiv 2510.08666); inclusionAI/dInfer @fce4e32
`python/dinfer/decoding/parallel_strategy.py` (`HierarchyDecoder.get_transfer_index`) driven by
`generate_uniform.py` (`BlockWiseDiffusionLLM`) as `benchmarks/benchmark.py --parallel_decoding
hierarchy` builds it; spec decoders.md §7.6. Per forward, the block's masks split into runs of
adjacent masks; each run's most confident mask is committed if its probability > low_threshold
(every tied maximum, as the reference's `==`), every mask with probability > threshold is
committed, and always the block's most confident mask ("forcing LLMs to decode tokens
separately"). Probabilities come from log_softmax in the logits' dtype, as the reference.

The loop (block alignment, unrolled groups whose idle forwards count as NFE, the EOS stop), the
differences from the reference shared by the three dInfer decoders, and why one prompt is decoded
at a time: `_dinfer.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _dinfer, _picks
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
IDLE_FORWARDS = True  # forwards after a block completes inside an unroll group commit nothing (see above)


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # ours: the common LLaDA baseline (decoders.md §9.1); benchmark.py uses 1024
    block_length: int = 32  # README example 3 (LLaDA-8B-Instruct): --block_length 32
    threshold: float = 0.9  # README example 3 / benchmark.py --threshold 0.9
    low_threshold: float = 0.3  # benchmark.py --low_threshold 0.3 (HierarchyDecoder's own default is 0.4)
    maximum_unroll: int = 4  # BlockWiseDiffusionLLM default
    expected_tpf: int = 8  # BlockWiseDiffusionLLM default
    temperature: float = 0.0  # benchmark.py builds every decoder with temperature=0

    def __post_init__(self) -> None:
        _dinfer.check_config(self, ("threshold", "low_threshold"))


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    temperature, mask_id = cfg.temperature, model.mask_id

    def select(logits: torch.Tensor, s: int, e: int, at: list[int]) -> tuple[list[int], list[bool]]:
        lo = at[0]  # scores for the span of the masks (cheaper than gathering their rows)
        x0, conf = _dinfer.hierarchy_scores(logits[:, lo : at[-1] + 1], temperature, mask_id, logits, s, e, lo)
        high, low = _picks.as_dtype(cfg.threshold, logits.dtype), _picks.as_dtype(cfg.low_threshold, logits.dtype)  # p's dtype
        return [x0[j - lo] for j in at], _dinfer.hierarchy_pick([conf[j - lo] for j in at], at, high, low)

    def make_select() -> _dinfer.Select:
        return select  # no state

    return _dinfer.decode(model, prompts, cfg, make_select, on_step, seeds)
