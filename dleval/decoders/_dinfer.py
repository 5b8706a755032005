"""dInfer's block loop and selection rules, shared by the `dinfer`, `dinfer_credit` and `dinfer_hierarchy` decoders.

Source: inclusionAI/dInfer @fce4e32, `python/dinfer/decoding/generate_uniform.py`
(`BlockWiseDiffusionLLM`, `BlockRunner`, `BaseDiffusionIteration`) with
`BlockIteratorFactory(start_block_align=True)` and `early_stop=True`, and
`python/dinfer/decoding/parallel_strategy.py` (`get_transfer_index_threshold`,
`CreditThresholdParallelDecoder._apply_credit_fusion`, `HierarchyDecoder.get_transfer_index`).
Each decoder's docstring describes its own rule; what the three share is here.

The loop is dInfer's, not Fast-dLLM's: blocks are aligned to absolute multiples
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

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

THRESHOLD_MARGIN = 1e-5  # get_transfer_index_threshold: max confidence - 1e-5

# select(block logits (1, b, V), masked (1, b), block start) -> (x0 (1, b), chosen (1, b) within masked)
Select = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def check_config(cfg: Any, probabilities: Sequence[str]) -> None:
    """The checks every dInfer Config shares; `probabilities` names its fields that live in [0, 1]."""
    if cfg.gen_length <= 0 or cfg.block_length <= 0:
        raise ValueError("gen_length and block_length must be positive")
    for name in probabilities:
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"{name} must be in [0, 1], not {value}")
    if cfg.maximum_unroll < 1 or cfg.expected_tpf < 1:
        raise ValueError("maximum_unroll and expected_tpf must be >= 1")
    if not cfg.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, not {cfg.temperature}")


def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Any,
    make_select: Callable[[], Select],
    on_step: OnStep | None,
    seeds: Sequence[int] | None,
) -> list[Generation]:
    """One prompt at a time; `make_select` gives each prompt a fresh rule (the credit matrix is state)."""
    return _parts.one_at_a_time(model, prompts, seeds, lambda prompt, i: decode_one(model, prompt, cfg, make_select(), on_step, i))


def decode_one(model: Model, prompt: Sequence[int], cfg: Any, select: Select, on_step: OnStep | None, row: int = 0) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, N)
    N, mask_id, eos_id = x.shape[1], model.mask_id, model.eos_id
    counts: list[torch.Tensor] = []  # (0-d) commits per forward, on the device: synced once at the end
    finish = "length"
    for s in range((P // cfg.block_length) * cfg.block_length, N, cfg.block_length):  # start_block_align=True
        e = min(s + cfg.block_length, N)
        blk = x[:, s:e]  # (1, b) view of the block, written in place
        while (left := int((blk == mask_id).sum())) > 0:  # one host sync per unroll group
            for _ in range(max(min(left // cfg.expected_tpf, cfg.maximum_unroll), 1)):
                logits = _parts.forward(model, x, [row]).logits[:, s:e]  # (1, b, V)
                x0, chosen = select(logits, blk == mask_id, s)  # chosen lies within the masks
                torch.where(chosen, x0, blk, out=blk)
                counts.append(chosen.sum())
                if on_step is not None:
                    full = torch.zeros_like(x, dtype=torch.bool)
                    full[:, s:e] = chosen
                    _parts.report_step(on_step, len(counts), x, full)
        if bool((blk == eos_id).any()):  # BlockRunner early_stop, then generate()'s break
            counts[-1] = counts[-1] + (x[:, e:] == mask_id).sum()
            x[:, e:] = eos_id
            finish = "eos"
            break
    commits = torch.stack(counts).tolist() if counts else []
    return _parts.generations(x, P, [commits], finish)[0]


def credit_update(
    logits: torch.Tensor, masked: torch.Tensor, credit: torch.Tensor | None, decay_beta: float, boost_gamma: float
) -> torch.Tensor:
    """CreditThresholdParallelDecoder._apply_credit_fusion's matrix update, float32. logits (1, b, V)."""
    top1, idx = torch.softmax(logits, dim=-1, dtype=torch.float32).max(dim=-1)  # (1, b)
    boost = torch.where(masked, top1.pow(boost_gamma), 0.0)  # = p ** gamma * masked (p ** gamma is finite)
    if credit is None:
        credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    else:
        credit = credit * decay_beta
    return credit.scatter_add_(2, idx.unsqueeze(-1), boost.unsqueeze(-1))


def threshold_rule(
    logits: torch.Tensor, masked: torch.Tensor, threshold: float, temperature: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """get_transfer_index_threshold: commit p(x0) >= min(threshold, max p - 1e-5), float32 (use_float64=False).
    Writes the [MASK] logit of `logits` (-inf): callers pass logits they are done with."""
    p = torch.softmax(logits, dim=-1, dtype=torch.float32)
    x0 = _parts.propose_(logits, temperature, mask_id)
    p = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    conf = p.masked_fill_(~masked, _parts.NEG_INF)
    bar = (conf.amax(dim=1, keepdim=True) - THRESHOLD_MARGIN).clamp_(-1000, threshold)
    return x0, conf >= bar  # -inf (not a mask) is below any bar >= -1000


def hierarchy_rule(
    logits: torch.Tensor, masked: torch.Tensor, threshold: float, low_threshold: float, temperature: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """HierarchyDecoder.get_transfer_index: each run of adjacent masks' best if > low_threshold,
    every mask > threshold, and the block's best; p from log_softmax in the logits' dtype.
    Writes the [MASK] logit of `logits` (-inf): callers pass logits they are done with."""
    logp = F.log_softmax(logits, dim=-1)
    x0 = _parts.propose_(logits, temperature, mask_id)
    p = logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()
    floor = torch.finfo(p.dtype).min
    unmasked = ~masked
    conf = p.masked_fill_(unmasked, floor)
    # Two masks share a run iff no non-mask lies between them, i.e. iff as many non-masks precede
    # them: that count is a run id in [0, b) (the reference numbers runs by their starts instead).
    run = torch.cumsum(unmasked, dim=1).clamp_(max=masked.shape[1] - 1)  # (1, b) int64; only a trailing non-mask is clamped
    run_max = torch.full_like(conf, floor).scatter_reduce_(1, run, conf, reduce="amax", include_self=True)
    chosen = ((conf == run_max.gather(1, run)) & (conf > low_threshold)) | (conf > threshold)
    chosen.scatter_(1, conf.argmax(dim=1, keepdim=True), True)  # the block's best (first of equal maxima)
    return x0, chosen & masked
