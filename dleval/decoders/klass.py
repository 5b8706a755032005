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
steps: it lives in a `_History` inside one decode() call and nowhere else.

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

from dleval.decoders import _parts
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


class _History:
    """The per-position state KLASS carries across forwards: log(p_prev + 1e-12) of the previous
    distribution (1, L, V) (the log it needs of p_prev, kept instead of recomputed) and the last
    `length` KLs (1, L, length), both over the generation region; the KLs are a ring (only
    "all of them below" is asked, which does not depend on their order)."""

    def __init__(self, L: int, V: int, length: int, device: torch.device) -> None:
        self.log_prev = torch.log(torch.zeros(1, L, V, dtype=torch.float64, device=device) + KL_EPS)  # p_prev = 0
        self.kl = torch.zeros(1, L, length, dtype=torch.float64, device=device)
        self.at = 0

    def update(self, p: torch.Tensor) -> None:
        """p (1, L, V): this forward's distributions."""
        log_p = torch.log(p + KL_EPS)
        self.kl[..., self.at] = (p * (log_p - self.log_prev)).sum(dim=-1)  # (1, L)
        self.at = (self.at + 1) % self.kl.shape[-1]
        self.log_prev = log_p

    def stable(self, threshold: float) -> torch.Tensor:
        return (self.kl < threshold).all(dim=-1)  # (1, L)


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
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L)
    L, B, mask_id = cfg.gen_length, cfg.block_length, model.mask_id
    per_block = cfg.total_steps // (L // B)
    history: _History | None = None
    counts: list[int | torch.Tensor] = []  # commits per forward: known on the host, or a 0-d tensor
    for s in range(P, P + L, B):
        e = s + B
        blk = x[:, s:e]  # (1, B) view of the block, written in place
        left = int((blk == mask_id).sum())  # masks left in the block, tracked on the host
        quota = _parts.quota(torch.tensor([left]), per_block)[0].tolist()  # (per_block,)
        for step in range(per_block):
            if not left:
                break
            masked = blk == mask_id  # (1, B)
            logits = _parts.forward(model, x, [row]).logits[:, P:]  # (1, L, V)
            if history is None:
                history = _History(L, logits.shape[-1], cfg.history_length, logits.device)
            if cfg.temperature > 0:  # llada_klass.py: softmax of the perturbed exp-logits
                logits = logits.to(torch.float64)
                logits = logits.exp() / (-torch.log(torch.rand_like(logits))) ** cfg.temperature
            p = torch.softmax(logits, dim=-1, dtype=torch.float64)  # (1, L, V)
            history.update(p)  # before the argmax below writes p's [MASK] column
            pb = p[:, s - P : e - P]  # (1, B, V)
            x0 = _parts.propose_(pb, 0.0, mask_id)  # (1, B); writes only the [MASK] column, never x0's
            conf = pb.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (1, B)
            n = 0
            if step >= cfg.history_length - 1:  # before, no mask is ready: no need to look
                chosen = history.stable(cfg.kl_threshold)[:, s - P : e - P] & (conf > cfg.conf_threshold) & masked
                n = int(chosen.sum())  # the step's host sync
            if n:
                torch.where(chosen, x0, blk, out=blk)
            else:  # no mask ready: the quota of the most confident masks (clamped to the masks left)
                k = min(quota[step], left)
                scores = conf.masked_fill_(~masked, _parts.NEG_INF)
                if k == 1:  # the best-scored mask (argmax: first of equal maxima, the stable sort's choice)
                    best = scores.argmax(dim=1, keepdim=True)
                    blk.scatter_(1, best, x0.gather(1, best))
                    chosen = torch.zeros_like(masked).scatter_(1, best, True) if on_step is not None else None
                    n = 1
                else:
                    chosen = _parts.top_k_mask(scores, [k]) & masked
                    torch.where(chosen, x0, blk, out=blk)
                    n = k  # k <= the masks left, whose scores are never -inf: exactly k commits
            left -= n
            counts.append(n)
            if on_step is not None:
                full = torch.zeros_like(x, dtype=torch.bool)
                if chosen is not None:
                    full[:, s:e] = chosen
                _parts.report_step(on_step, len(counts), x, full)
    return _parts.generations(x, P, [counts])[0]
