"""dParallel: entropy-threshold parallel decoding (H <= tau, lowest entropy always) over sequential blocks.

Source: Chen et al., "dParallel: Learnable Parallel Decoding for dLLMs" (arXiv 2509.26488);
czg1225/dParallel `LLaDA/generate.py` @2ca4d14 (`generate` with `get_transfer_index_entropy`);
spec decoders.md §3.1. The decoding rule is meant for the certainty-forcing distilled model
(`Zigeng/dParallel-LLaDA-8B-instruct`), but runs on any LLaDA-format model. Fast-dLLM's no-cache
loop: each block is decoded until it has no mask; a forward commits the masked position of the
block with the lowest entropy (float64, §0.3) and every other one with H <= tau (the code rejects
H > tau). No EOS early stop (the reference's early exit is commented out), so every block is
decoded and NFE >= number of blocks.

**Dream models** (`model.logit_shift`): dParallel's Dream path (`Dream/eval_instruct/model/
generation_utils_semiar.py`, alg entropy_threshold; the model undoes the logit shift) computes the
entropy in the logits' dtype (bf16 on GPU) as -sum p log(p + 1e-8) and keeps the others with
H < tau (strict); followed here, so bf16 runs rank as the reference does.

The reported numbers use no cache (README), so `cache` defaults to "none". The reference also has
prefix- and dual-cache loops with the entropy rule; `cache` and `refresh_every` select them, with
the same loops as `fastdllm`, including the reference's idle cached forward after a block that its
block-start forward completed (counted; `skip_idle_forward=True` is ours and leaves it out), and
the same deviation ([MASK] never proposed). Ties break by (entropy, then position) instead of `torch.topk`'s
order. The reference decodes one prompt at a time; here prompts are batched, each row advancing
on its own and leaving the forward once done, with its batch-1 tokens and NFE (`_blocks.block_loop`).
On LLaDA models the entropies are taken in float32 first: a decision that `entropy32_band` proves
the same in float64 is taken there, any other step's on the float64 scores
(`_picks.pick_threshold_within`; same tokens).
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
PAPER_MODEL = "Zigeng/dParallel-LLaDA-8B-instruct"
DREAM_PAPER_MODEL = "Zigeng/dParallel_Dream_7B_Instruct"  # dParallel's Dream student (czg1225/dParallel README)
CPU_MODEL = "tiny-dparallel"  # the bundled student of `dleval train distill --method dparallel`


BAND_SCALE = 1.0  # tests set it to inf: every decision on the float64 scores


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # LLaDA/eval.sh: gen_length=256
    block_length: int = 32  # eval.sh: block_length=32
    threshold: float = 0.5  # eval.sh: entropy threshold 0.5 (0.45 for MBPP)
    cache: Literal["none", "prefix", "dual"] = "none"  # README: results obtained without caching
    refresh_every: int | None = None  # ours, as in fastdllm: extra full forward every N forwards in a block
    skip_idle_forward: bool = False  # ours: skip the reference's idle cached forward (see block_loop): same tokens, fewer NFE
    temperature: float = 0.0  # eval_llada.py passes temperature=0

    def __post_init__(self) -> None:
        _parts.check_blocks(self.gen_length, self.block_length)
        _parts.check_cache(self.cache, self.refresh_every)
        _parts.check_number("threshold", self.threshold, why="an entropy bound tau_H in nats")
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
    dream = bool(getattr(model, "logit_shift", False))
    entropy = _blocks.EntropySelect(mask_id, cfg.temperature, noise)  # -H (H <= tau is -H >= -tau, negations exact)

    def select(logits: torch.Tensor, index: list[int], rows: list[int]) -> tuple:
        if dream:  # the Dream path's `sample_tokens_with_entropy`: H in the logits' dtype, log(p + 1e-8), H < tau
            x0 = _parts.propose(logits, cfg.temperature, mask_id, noise, rows)  # (R, C)
            p = torch.softmax(logits, dim=-1)
            return x0, (p * torch.log(p + 1e-8)).sum(dim=-1)  # -H: the sum negated, exactly
        return entropy(logits, index, rows)

    def rule(v: list[float], cands: list[int], index: int, dtype: torch.dtype) -> list[int] | None:
        # the lowest H always, and every H <= tau (Dream: H < tau, i.e. -H > -tau; negation is exact)
        if not dream and dtype != torch.float64:  # float32 -H: decided within its band, else None
            return _picks.pick_threshold_within(v, cands, -cfg.threshold, entropy.band(v) * BAND_SCALE)
        return _picks.pick_threshold(v, cands, -_picks.as_dtype(cfg.threshold, dtype), strict=dream)

    return _blocks.blocks(model, prompts, cfg, select, rule, on_step, compact=cfg.temperature == 0)  # noise: full blocks
