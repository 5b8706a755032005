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
    """The per-position state KLASS carries across forwards: the previous distribution (1, L, V)
    and the last `length` KLs (1, L, length), both over the generation region."""

    def __init__(self, L: int, V: int, length: int, device: torch.device) -> None:
        self.p_prev = torch.zeros(1, L, V, dtype=torch.float64, device=device)
        self.kl = torch.zeros(1, L, length, dtype=torch.float64, device=device)

    def update(self, p: torch.Tensor) -> None:
        """p (1, L, V): this forward's distributions."""
        kl = (p * (torch.log(p + KL_EPS) - torch.log(self.p_prev + KL_EPS))).sum(dim=-1)  # (1, L)
        self.kl = torch.roll(self.kl, shifts=-1, dims=-1)
        self.kl[..., -1] = kl
        self.p_prev = p

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
    out = []
    for i, prompt in enumerate(prompts):
        if seeds is not None:
            torch.manual_seed(int(seeds[i]))  # the Gumbel noise draws from the global RNG
        out.append(_decode_one(model, prompt, cfg, on_step))
    return out


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L)
    L, B = cfg.gen_length, cfg.block_length
    per_block = cfg.total_steps // (L // B)
    history: _History | None = None
    commits: list[int] = []
    for s in range(P, P + L, B):
        e = s + B
        quota = _parts.quota((x[:, s:e] == model.mask_id).sum(dim=1), per_block)  # (1, per_block)
        for step in range(per_block):
            masked = x[:, s:e] == model.mask_id  # (1, B)
            if not bool(masked.any()):
                break
            logits = model.forward(x).logits[:, P:]  # (1, L, V)
            if history is None:
                history = _History(L, logits.shape[-1], cfg.history_length, logits.device)
            if cfg.temperature > 0:  # llada_klass.py: softmax of the perturbed exp-logits
                logits = logits.to(torch.float64)
                logits = logits.exp() / (-torch.log(torch.rand_like(logits))) ** cfg.temperature
            p = torch.softmax(logits.to(torch.float64), dim=-1)  # (1, L, V)
            x0 = _parts.propose(p[:, s - P : e - P], 0.0, model.mask_id)  # (1, B)
            conf = torch.gather(p[:, s - P : e - P], -1, x0.unsqueeze(-1)).squeeze(-1)  # (1, B)
            history.update(p)
            if step >= cfg.history_length - 1:
                stable = history.stable(cfg.kl_threshold)[:, s - P : e - P]
            else:
                stable = torch.zeros_like(masked)
            chosen = stable & (conf > cfg.conf_threshold) & masked
            if not bool(chosen.any()):
                k = min(int(quota[0, step]), int(masked.sum()))
                scores = torch.where(masked, conf, torch.full_like(conf, _parts.NEG_INF))
                chosen = _parts.top_k_mask(scores, [k]) & masked
            x[:, s:e] = torch.where(chosen, x0, x[:, s:e])
            commits.append(int(chosen.sum()))
            if on_step is not None:
                full = torch.zeros_like(x, dtype=torch.bool)
                full[:, s:e] = chosen
                _parts.report_step(on_step, len(commits), x, full)
    return _parts.generations(x, P, [commits])[0]
