"""EB-sampler: entropy-bounded unmasking (accept the largest k with sum H - max H <= gamma) over sequential blocks.

Source: Ben-Hamu et al., "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
Unmasking" (arXiv 2505.24857); the same rule as diffusers' `EntropyBoundScheduler`
(`entropy_bound`, default 0.1); spec decoders.md §7.5. No reference code was available for the
LLaDA setting, so the rule comes from the abstract and the diffusers docs. Each forward sorts the
masked positions of the current block by entropy ascending (float64, §0.3; ties by position) and
commits the first k for the largest k with sum(H_1..k) - max(H_1..k) <= gamma, at least one.
The left side bounds the joint dependence of the accepted tokens, so gamma = 0 commits one token
per forward (whenever entropies are positive) and larger gamma commits more. Tokens are the
argmax over every token but [MASK] (`_parts.propose`), as in `fastdllm`.

The rule composes with the harness's block schedule: Fast-dLLM's sequential-block loop, each
block decoded until it has no mask, on the common LLaDA baseline (gen 256, block 32, T = 0;
decoders.md §9 checklist 1). The Fast-dLLM caches are available but off by default; with one,
NFE counts the forwards as Fast-dLLM's loops spend them (`_blocks.block_loop`).
Prompts are batched, each row advancing on its own and leaving the forward once done, with its
batch-1 tokens and NFE (`_blocks.block_loop`). The entropies are taken in float32 first: a rule
decision that `entropy32_band` proves the same in float64 is taken there, any other step's on the
float64 scores (`_picks.pick_entropy_bound_within`; same tokens; 17 of 139 steps retaken on
30 synth_gsm problems with the tiny model, fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dleval.decoders import _blocks, _parts, _picks
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = True


BAND_SCALE = 1.0  # tests set it to inf: every decision on the float64 scores


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # decoders.md §9.1: the common LLaDA baseline (gen 256, block 32)
    block_length: int = 32  # same baseline; block_length = gen_length gives one global block
    gamma: float = 0.1  # diffusers EntropyBoundScheduler: entropy_bound = 0.1
    cache: Literal["none", "prefix", "dual"] = "none"  # ours: Fast-dLLM caches, off as in the paper's plain sampler
    refresh_every: int | None = None  # ours, as in fastdllm: extra full forward every N forwards in a block
    skip_idle_forward: bool = False  # ours: skip the reference's idle cached forward (see block_loop): same tokens, fewer NFE
    temperature: float = 0.0  # T = 0 as every LLaDA headline number (§0.3)

    def __post_init__(self) -> None:
        _parts.check_blocks(self.gen_length, self.block_length)
        _parts.check_number("gamma", self.gamma, why="an entropy budget in nats")
        _parts.check_cache(self.cache, self.refresh_every)
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    # Noise only where it is drawn (a per-decode cost); with seeds always (it checks their count)
    noise = _parts.Noise(seeds, len(prompts), model.device) if cfg.temperature > 0 or seeds is not None else None

    mask_id = model.mask_id
    select = _blocks.EntropySelect(mask_id, cfg.temperature, noise)  # -H

    def rule(v: list[float], cands: list[int], index: int, dtype: torch.dtype) -> list[int] | None:
        if dtype != torch.float64:  # float32 -H: decided within its band, else None
            return _picks.pick_entropy_bound_within(v, cands, cfg.gamma, select.band(v) * BAND_SCALE)
        return _picks.pick_entropy_bound(v, cands, cfg.gamma)

    return _blocks.blocks(model, prompts, cfg, select, rule, on_step, compact=cfg.temperature == 0)  # noise: full blocks
