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

The step decides on the host (`_host.py`): scores only for the block's masked rows, one read-back
of their x0 and confidence per forward, the rule on Python lists, the canvas as a host array.
The reference reads back once per unroll group (threshold) or once per forward (credit's mask
check, hierarchy's boolean indexing); on a GPU this loop synchronizes once per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dleval.decoders import _host, _parts, _picks
from dleval.models.base import Model
from dleval.types import Generation, OnStep

THRESHOLD_MARGIN = 1e-5  # get_transfer_index_threshold: max confidence - 1e-5
MARGIN32 = _host.f32(THRESHOLD_MARGIN)  # the reference subtracts it from a float32 tensor

# select(logits (1, N, V) of the forward, block start s, block end e, the block's masked canvas
# positions `at` (increasing, not empty)) -> (x0, chosen): a proposed token and a commit flag per
# position of `at`. A fresh select per prompt (the credit matrix is state).
Select = Callable[[torch.Tensor, int, int, list[int]], tuple[list[int], list[bool]]]


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
    canvas = _host.Canvas(model, prompt, cfg.gen_length)
    ids, P, N, B, mask_id, T = canvas.ids, canvas.P, canvas.N, cfg.block_length, model.mask_id, cfg.temperature
    counts: list[int] = []  # commits per forward
    for s in range((P // B) * B, N, B):  # start_block_align=True
        e = min(s + B, N)
        at = [j for j in range(s, e) if ids[j] == mask_id]  # the block's masks, tracked on the host
        while at:
            for _ in range(max(min(len(at) // cfg.expected_tpf, cfg.maximum_unroll), 1)):
                logits = _parts.forward(model, canvas.x, [row]).logits  # (1, N, V)
                committed: list[int] = []
                if at:
                    x0, chosen = select(logits, s, e, at)  # the step's read-back
                    for j, token, c in zip(at, x0, chosen):
                        if c:
                            ids[j] = token
                            committed.append(j)
                    at = [j for j, c in zip(at, chosen) if not c]
                    canvas.push()
                elif T > 0:  # an idle forward commits nothing but draws the block's noise, as the reference (later draws follow it)
                    _parts.gumbel_argmax(logits[:, s:e], T)
                counts.append(len(committed))
                if on_step is not None:
                    canvas.report(on_step, len(counts), committed)
        if model.eos_id in ids[s:e]:  # BlockRunner early_stop, then generate()'s break
            counts[-1] += N - e  # every position after the block is a mask: the block's last forward fills them with EOS
            return Generation((*ids[P:e], *[model.eos_id] * (N - e)), tuple(counts), "eos")
    return Generation(tuple(ids[P:]), tuple(counts), "length")


def threshold_scores(
    rows: torch.Tensor, temperature: float, mask_id: int, logits: torch.Tensor | None, s: int, e: int, lo: int
) -> tuple[list[int], list[float]]:
    """x0 and get_transfer_index_threshold's confidence p(x0) (float32, use_float64=False) of each
    row of `rows` (1, w, V), rows [lo, lo + w) of the block (`_host.draft`'s arguments)."""
    p = torch.softmax(rows, dim=-1, dtype=torch.float32)  # before the draft may write the [MASK] logit
    x0, tokens = _host.draft(rows, temperature, mask_id, logits, s, e, lo)  # (1, w, 1)
    return tokens, [c for (c,) in p.gather(-1, x0).tolist()[0]]


def threshold_pick(conf: Sequence[float], threshold32: float) -> list[bool]:
    """get_transfer_index_threshold's choice among masks of confidence `conf`: every p(x0) >=
    min(threshold, max p - 1e-5), so at least the most confident, in the reference's float32
    arithmetic (threshold32 = `_host.f32(threshold)`).

    max p - 1e-5 is exact as f32(max p - MARGIN32): two float32 values in [0, 1] differ by a
    value exact in double when p >= 2**-46, and below that both round to -MARGIN32."""
    bar = min(max(_host.f32(max(conf) - MARGIN32), -1000.0), threshold32)  # .clamp(-1000, threshold)
    return [c >= bar for c in conf]


def hierarchy_scores(
    rows: torch.Tensor, temperature: float, mask_id: int, logits: torch.Tensor | None, s: int, e: int, lo: int
) -> tuple[list[int], list[float]]:
    """x0 and HierarchyDecoder's p(x0) = exp(log_softmax(rows)[x0]), in the logits' dtype, of each
    row of `rows` (as `threshold_scores`)."""
    logp = F.log_softmax(rows, dim=-1)
    x0, tokens = _host.draft(rows, temperature, mask_id, logits, s, e, lo)  # (1, w, 1)
    return tokens, [c for (c,) in logp.gather(-1, x0).exp_().tolist()[0]]


def hierarchy_pick(conf: Sequence[float], at: Sequence[int], threshold: float, low_threshold: float) -> list[bool]:
    """HierarchyDecoder.get_transfer_index's choice among masks of confidence `conf` at the
    increasing positions `at` (a gap is a non-mask): each run of adjacent masks' most confident
    (every tied maximum) if p > low_threshold, every mask with p > threshold, and the most
    confident mask (the first of equal maxima). The thresholds come rounded to p's dtype
    (`_picks.as_dtype`), as torch compares a tensor with a Python number."""
    n = len(conf)
    chosen = [False] * n
    best = 0
    i = 0
    while i < n:
        j = i + 1  # the run of masks [i, j)
        while j < n and at[j] == at[j - 1] + 1:
            j += 1
        top = max(conf[i:j])
        for q in range(i, j):
            c = conf[q]
            chosen[q] = (c == top and c > low_threshold) or c > threshold
            if c > conf[best]:
                best = q
        i = j
    chosen[best] = True
    return chosen


def credit_update(
    logits: torch.Tensor, masked: torch.Tensor | None, credit: torch.Tensor | None, decay_beta: float, boost_gamma: float
) -> torch.Tensor:
    """CreditThresholdParallelDecoder._apply_credit_fusion's matrix update, float32: credit (1, b, V)
    <- decay_beta * credit (zeros at a block's first forward: None), then + p_max ** boost_gamma at
    each row's argmax, on the masked rows (masked (1, b); None: on every row). logits (1, b, V)."""
    top1, idx = torch.softmax(logits, dim=-1, dtype=torch.float32).max(dim=-1, keepdim=True)  # (1, b, 1)
    boost = top1.pow(boost_gamma)  # on the reference's (1, b) layout: CPU pow is position dependent (_host)
    if masked is not None:
        boost = torch.where(masked.unsqueeze(-1), boost, 0.0)  # = p ** gamma * masked (p ** gamma is finite)
    credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device) if credit is None else credit * decay_beta
    return credit.scatter_add_(2, idx, boost)


def _on_block(
    masked: torch.Tensor, rule: Callable[[list[int]], tuple[list[int], list[bool]]], x0: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    at = [j for j, m in enumerate(masked[0].tolist()) if m]
    chosen = [False] * len(x0)
    if at:
        for j, c in zip(at, rule(at)):
            chosen[j] = c
    return torch.tensor([x0], device=masked.device), torch.tensor([chosen], device=masked.device)


def threshold_rule(
    logits: torch.Tensor, masked: torch.Tensor, threshold: float, temperature: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dinfer`'s rule on a block's tensors, as the reference's function takes them: logits
    (1, b, V), masked (1, b) -> (x0 (1, b), chosen (1, b)). Writes the [MASK] logit of `logits`."""
    x0, conf = threshold_scores(logits, temperature, mask_id, logits, 0, logits.shape[1], 0)
    return _on_block(masked, lambda at: threshold_pick([conf[j] for j in at], _host.f32(threshold)), x0)


def hierarchy_rule(
    logits: torch.Tensor, masked: torch.Tensor, threshold: float, low_threshold: float, temperature: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dinfer_hierarchy`'s rule on a block's tensors, as the reference's function takes them:
    logits (1, b, V), masked (1, b) -> (x0 (1, b), chosen (1, b)). Writes the [MASK] logit of `logits`."""
    x0, conf = hierarchy_scores(logits, temperature, mask_id, logits, 0, logits.shape[1], 0)
    high, low = _picks.as_dtype(threshold, logits.dtype), _picks.as_dtype(low_threshold, logits.dtype)
    return _on_block(masked, lambda at: hierarchy_pick([conf[j] for j in at], at, high, low), x0)
