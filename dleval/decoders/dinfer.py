"""dInfer's threshold decoder: commit every mask with confidence >= min(threshold, best - 1e-5), in dInfer's block loop.

Source: Ma et al., "dInfer: An Efficient Inference Framework for Diffusion Language Models"
(arXiv 2510.08666); inclusionAI/dInfer @fce4e32 `python/dinfer/decoding/parallel_strategy.py`
(`ThresholdParallelDecoder`, `get_transfer_index_threshold`) driven by `generate_uniform.py`
(`BlockWiseDiffusionLLM`) as `benchmarks/benchmark.py` builds it; spec decoders.md §7.6. Per
forward, every mask of the block whose softmax probability of its argmax (float32, as the
reference's use_float64=False) is >= min(threshold, max - 1e-5) is committed, so at least the
most confident one. `dinfer_credit` and `dinfer_hierarchy` are dInfer's other two decoders.

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
    maximum_unroll: int = 4  # BlockWiseDiffusionLLM default
    expected_tpf: int = 8  # BlockWiseDiffusionLLM default
    temperature: float = 0.0  # benchmark.py builds every decoder with temperature=0

    def __post_init__(self) -> None:
        _dinfer.check_config(self, ("threshold",))


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    threshold, temperature, mask_id = _host.f32(cfg.threshold), cfg.temperature, model.mask_id

    def select(logits: torch.Tensor, s: int, e: int, at: list[int]) -> tuple[list[int], list[bool]]:
        lo = at[0]  # scores for the span of the masks (cheaper than gathering their rows)
        x0, conf = _dinfer.threshold_scores(logits[:, lo : at[-1] + 1], temperature, mask_id, logits, s, e, lo)
        return [x0[j - lo] for j in at], _dinfer.threshold_pick([conf[j - lo] for j in at], threshold)

    def make_select() -> _dinfer.Select:
        return select  # no state

    return _dinfer.decode(model, prompts, cfg, make_select, on_step, seeds)
