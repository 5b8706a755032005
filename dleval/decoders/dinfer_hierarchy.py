"""dInfer's hierarchy decoder: the best mask of each run of adjacent masks (above low_threshold), plus every mask above threshold.

Source: Ma et al., "dInfer" (arXiv 2510.08666); inclusionAI/dInfer @fce4e32
`python/dinfer/decoding/parallel_strategy.py` (`HierarchyDecoder.get_transfer_index`) driven by
`generate_uniform.py` (`BlockWiseDiffusionLLM`) as `benchmarks/benchmark.py --parallel_decoding
hierarchy` builds it; spec decoders.md §7.6. Per forward, the block's masks split into runs of
adjacent masks; each run's most confident mask is committed if its probability > low_threshold
(every tied maximum, as the reference's `==`), every mask with probability > threshold is
committed, and always the block's most confident mask ("forcing LLMs to decode tokens
separately"). Probabilities come from log_softmax in the logits' dtype, as the reference.

The loop is dInfer's, not Fast-dLLM's (`_dinfer.py`): blocks are aligned to absolute multiples
of block_length, so the first block overlaps the prompt's tail and a last, partial block ends at
the canvas end; every forward is over the whole canvas; and a block is checked for masks only
every `unroll` forwards, unroll = max(min(masks // expected_tpf, maximum_unroll), 1). The
forwards after a block completes inside such a group commit nothing but are real NFE (the
reference counts them); `maximum_unroll = 1` removes them, an option the reference has too.
After a block, if it holds an EOS, every position after the block becomes EOS (committed by the
block's last forward) and decoding stops (finish="eos").

Where this differs from the reference, and why:
- The argmax skips [MASK] (`_parts.propose`); the reference's threshold rule drops such
  proposals from the candidates instead (`rm_mask`), which on a model that ranks [MASK] first
  never ends; its hierarchy rule would commit them.
- Ties break by position (decoders.md §0.3).
- Not implemented: dInfer's KV caches (prefix/dual with `KVCacheFactory`), the vicinity refresh
  (`prefix_look`/`after_look`/`warmup_times`) and iteration smoothing (`cont_weight`); the
  defaults of `benchmarks/benchmark.py` use none of them.
One prompt at a time (BATCHED = False), as `HierarchyDecoder` requires (it asserts batch size 1).
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
    def make_select() -> _dinfer.Select:
        return lambda logits, masked, start: _dinfer.hierarchy_rule(
            logits, masked, cfg.threshold, cfg.low_threshold, cfg.temperature, model.mask_id
        )

    return _dinfer.decode(model, prompts, cfg, make_select, on_step, seeds)
