"""KLASS, KL-Adaptive Stability Sampling: unmask every mask that is both confident and stable over recent steps.

Source: Kim et al., "KLASS: KL-Adaptive Stability Sampling for Fast Inference in Masked Diffusion
Models" (arXiv 2511.05664); shkim0116/KLASS `src/model/llada_klass.py` @ad87ecb
(`stable_confident_decode`, alg="klass", unmask_strategy="all"), defaults from
`scripts/llada_gsm8k.sh`.

LLaDA's semi-autoregressive blocks and per-step quota (as `llada`), with a stability test in
front. Each forward gives p_t = softmax(logits) (float64) at every generation position, and
KL(p_t || p_{t-1}) = sum p_t (log(p_t + 1e-12) - log(p_{t-1} + 1e-12)) against the previous
forward's distribution (zeros before the first forward, so the first KL is huge). The last
`history_length` KLs are kept per position. From the block's step `history_length - 1` on, a
mask is *ready* when all its recent KLs are < `kl_threshold` and its confidence p_t(x0) >
`conf_threshold`. Every ready mask of the block is committed; when none is ready, the step's
quota of the most confident masks is. A block ends when it has no mask or its
`steps / num_blocks` forwards are spent, so NFE <= steps. The history is decoder state across
steps: it lives inside one decode() call and nowhere else, on the host (see `_decode_one`).

Where this differs from the reference, and why:
- The reference hard-codes mask_id = 126336 inside the function; the model's mask id is used.
- When ready commits run ahead of the quota schedule, the reference's fallback top-k can ask for
  more positions than the block has masks and then overwrites committed or prompt tokens with
  argmax guesses (its -inf confidences are still picked); the quota is clamped to the masks left.
  With the paper's steps = gen_length (quota 1) this never happens.
- The argmax skips [MASK] (`_parts.propose`; a trained model never ranks it first), and ties
  break by position instead of `torch.topk`'s unspecified order (decoders.md §0.3).
- At temperature > 0 the reference takes the softmax of the Gumbel-perturbed exp-logits for both
  the confidence and the KL; that is kept.
One prompt at a time (BATCHED = False), as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _host, _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
KL_EPS = 1e-12  # llada_klass.py: eps inside both logs of the KL


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # scripts/llada_gsm8k.sh GEN_LENGTH
    block_length: int = 64  # scripts/llada_gsm8k.sh BLOCK_LENGTH
    steps: int | None = None  # None = gen_length: scripts/llada_gsm8k.sh STEPS=256 with GEN_LENGTH=256
    conf_threshold: float = 0.6  # scripts/llada_gsm8k.sh CONF_THRESHOLD (function default 0.9)
    kl_threshold: float = 0.015  # scripts/llada_gsm8k.sh KL_THRESHOLD (function default 0.01)
    history_length: int = 2  # scripts/llada_gsm8k.sh HISTORY_LENGTH
    temperature: float = 0.0  # stable_confident_decode default

    def __post_init__(self) -> None:
        blocks = _parts.check_blocks(self.gen_length, self.block_length)
        if self.total_steps <= 0 or self.total_steps % blocks:
            raise ValueError(f"steps ({self.total_steps}) must be a positive multiple of the number of blocks ({blocks})")
        if not 0.0 <= self.conf_threshold <= 1.0:  # NaN fails too
            raise ValueError(f"conf_threshold must be a probability in [0, 1], not {self.conf_threshold}")
        if not self.kl_threshold >= 0:
            raise ValueError(f"kl_threshold must be >= 0, not {self.kl_threshold}")
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, not {self.history_length}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    return _parts.one_at_a_time(model, prompts, seeds, lambda prompt, i: _decode_one(model, prompt, cfg, on_step, i))


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None, row: int) -> Generation:
    L, B, H, T = cfg.gen_length, cfg.block_length, cfg.history_length, cfg.temperature
    canvas = _host.Canvas(model, prompt, L)  # (1, P+L)
    ids, P, mask_id = canvas.ids, canvas.P, model.mask_id
    per_block = cfg.total_steps // (L // B)
    # The history, on the host and for the masks only (a committed position is never asked again,
    # and every step below is row-wise): at = the generation's masks; calm[j] = how many forwards
    # in a row gave position j a KL < kl_threshold, so "its last H KLs are all below" is
    # calm[j] >= H (every mask has a KL from every forward, and a check comes after >= H of them).
    at = list(range(P, P + L))
    calm = dict.fromkeys(at, 0)
    log_prev: torch.Tensor | None = None  # (1, w, V) log(p_prev + 1e-12) over the span at[0]..at[-1] of the last forward
    held = P  # where that span starts
    counts: list[int] = []
    for s in range(P, P + L, B):
        e = s + B
        left = sum(1 for j in range(s, e) if ids[j] == mask_id)  # masks left in the block, tracked on the host
        base, extra = divmod(left, per_block)  # _parts.quota: floor(n / steps) per step, the first n mod steps one more
        for step in range(per_block):
            if not left:
                break
            logits = _parts.forward(model, canvas.x, [row]).logits  # (1, P+L, V)
            lo, hi = at[0], at[-1] + 1  # scores for the span of the masks (cheaper than gathering their rows)
            if T > 0:  # llada_klass.py: softmax of the perturbed exp-logits, drawn over the whole generation
                g = logits[:, P:].to(torch.float64)
                rows = (g.exp() / (-torch.log(torch.rand_like(g))) ** T)[:, lo - P : hi - P]
            else:
                rows = logits[:, lo:hi]
            p = torch.softmax(rows, dim=-1, dtype=torch.float64)  # (1, w, V)
            log_p = (p + KL_EPS).log_()
            if log_prev is None:  # before the first forward p_prev = 0
                log_prev = torch.full((), KL_EPS, dtype=torch.float64, device=p.device).log_()
            else:
                log_prev = log_prev[:, lo - held : hi - held]
            kl = (log_p - log_prev).mul_(p).sum(dim=-1).tolist()[0]  # = sum p (log_p - log_prev), bit for bit
            log_prev, held = log_p, lo
            for j in at:
                calm[j] = calm[j] + 1 if kl[j - lo] < cfg.kl_threshold else 0
            i, k = _host.span(at, s, e)  # the block's masks: at[i:k]
            a = at[i]
            pb = p[:, a - lo : at[k - 1] + 1 - lo]  # (1, w', V) the span of the block's masks
            x0, tokens = _host.draft(pb, 0.0, mask_id)  # the argmax of p (it may write [MASK]'s column, after the KL)
            conf = pb.gather(-1, x0).tolist()[0]  # [[p(x0)], ...]
            scored = [(conf[j - a][0], j) for j in at[i:k]]
            chosen: list[int] = []
            if step >= H - 1:  # before, no mask is ready: no need to look
                chosen = [j for c, j in scored if calm[j] >= H and c > cfg.conf_threshold]
            if not chosen:  # no mask ready: the quota of the most confident masks (clamped to the masks left)
                quota = min(base + (step < extra), left)
                chosen = sorted(j for _, j in sorted(scored, key=_best_first)[:quota])
            for j in chosen:
                ids[j] = tokens[j - a]
            canvas.push()
            taken = set(chosen)
            at = [j for j in at if j not in taken]
            left -= len(chosen)
            counts.append(len(chosen))
            if on_step is not None:
                canvas.report(on_step, len(counts), chosen)
    return Generation(tuple(ids[P:]), tuple(counts), "length")


def _best_first(scored: tuple[float, int]) -> tuple[float, int]:
    """Sort key: confidence descending, ties by position (`_parts.top_k_mask`'s order)."""
    return -scored[0], scored[1]
