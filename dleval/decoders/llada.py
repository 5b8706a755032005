"""LLaDA low-confidence remasking with a fixed per-step quota: the baseline every paper compares to.

Source: Nie et al., "Large Language Diffusion Models" (arXiv 2502.09992); ML-GSAI/LLaDA
`generate.py` @b7e6c35; spec decoders.md §1.1. Semi-autoregressive blocks of `block_length`,
`steps / num_blocks` forwards per block, each committing a quota fixed in advance
(floor(n/s), the first n mod s steps one more) of the most confident masked positions of the
current block. No EOS stop: the forward count is exactly `steps`.

Matches the reference code, including its quirk in `confidence_eos_eot_inf`: at temperature 0
the perturbed and raw logits are one tensor, so EOS *and* EoT get confidence 0; at T>0 only
EoT does (decoders.md §1.1 step 5), and in taking the confidence softmax in the logits' dtype
(`F.softmax(logits)`: bf16 on a bf16 model, where rounded confidences tie often);
`score_dtype="float64"` (ours) takes it in float64 instead. Deviation, per the harness
conventions (§0.3): ties break by position instead of `torch.topk`'s unspecified order. Batches
are left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

ALIASES = ("vanilla",)
BATCHED = True


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # decoders.md §9.1: the common baseline of Fast-dLLM/dParallel/d3LLM/Learn2PD/Prophet
    block_length: int = 32  # same baseline (gen 256, block 32); LLaDA EVAL.md also uses block = gen_length
    steps: int | None = None  # None = gen_length, one token per forward (the "TPF = 1" baseline)
    temperature: float = 0.0  # every headline LLaDA number uses T = 0 (§0.3)
    cfg_scale: float = 0.0  # generate.py default; CFG is used only for likelihood tasks (§1.2)
    remasking: str = "low_confidence"  # generate.py: "low_confidence" | "random"
    logits_eos_inf: bool = False  # generate.py flag: EOS can never be produced
    confidence_eos_eot_inf: bool = False  # generate.py flag: EOS/EoT get confidence 0 (see quirk above)
    score_dtype: str = "logits"  # generate.py: F.softmax(logits) in the logits' dtype; "float64" is ours

    def __post_init__(self) -> None:
        blocks = _parts.check_blocks(self.gen_length, self.block_length)
        if self.total_steps <= 0 or self.total_steps % blocks:
            raise ValueError(f"steps ({self.total_steps}) must be a positive multiple of the number of blocks ({blocks})")
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking must be 'low_confidence' or 'random', not {self.remasking!r}")
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")
        _parts.check_number("cfg_scale", self.cfg_scale, why="classifier-free guidance weight; 0 = off")
        _parts.check_score_dtype(self.score_dtype)

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
    x, attention, P = _parts.make_canvas(model, prompts, cfg.gen_length)
    noise = _parts.Noise(seeds, len(prompts), model.device)
    mask_id, eos_id, eot_id = model.mask_id, model.eos_id, model.eot_id
    B, L = cfg.block_length, cfg.gen_length
    blocks = L // B
    per_block = cfg.total_steps // blocks
    prompt_index = None
    if cfg.cfg_scale > 0:
        prompt_index = torch.zeros_like(x, dtype=torch.bool)
        prompt_index[:, :P] = True
    dtype = _parts.SCORE_DTYPES[cfg.score_dtype]
    # Commits per forward: a list of ints when every row's quota was one (then exactly one
    # commit per row, see below), else a (B,) tensor kept on the device: no host sync per step.
    counts: list[list[int] | torch.Tensor] = []
    nfe = 0
    for b in range(blocks):
        s, e = P + b * B, P + (b + 1) * B
        blk = x[:, s:e]  # (N, B) view of the block: written in place
        k = _parts.quota((blk == mask_id).sum(dim=1), per_block).tolist()  # (N, per_block), one sync per block
        for i in range(per_block):
            logits = _forward(model, x, attention, prompt_index, cfg.cfg_scale)[:, s:e]  # (N, B_len, V)
            nfe += 1
            if cfg.logits_eos_inf:
                logits[:, :, eos_id] = _parts.NEG_INF
            ks = [row[i] for row in k]
            greedy = cfg.temperature == 0 and cfg.remasking == "low_confidence" and not cfg.confidence_eos_eot_inf
            if greedy and all(n == 1 for n in ks):
                # T = 0, one commit per row. softmax is monotone in the logits, so its value at the
                # argmax is its maximum: score = max p bit for bit, and the argmax is only taken
                # at the chosen position. The best-scored mask is the argmax of the masked scores
                # (the first of equal maxima, the stable sort's choice); the quota never asks for
                # more than the masks left, and masked scores are never -inf: exactly one commit.
                score = torch.softmax(logits, dim=-1, dtype=dtype).amax(dim=-1)  # (N, B_len)
                best = score.masked_fill_(blk != mask_id, _parts.NEG_INF).argmax(dim=1, keepdim=True)  # (N, 1)
                token = logits.gather(1, best.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).argmax(dim=-1)  # (N, 1)
                blk.scatter_(1, best, token)
                counts.append([1] * len(ks))
                chosen = None
            else:
                x0 = _parts.gumbel_argmax(logits, cfg.temperature, noise)  # noise over the block: the same for any padding
                if cfg.confidence_eos_eot_inf:
                    if cfg.temperature == 0:
                        logits[:, :, eos_id] = _parts.NEG_INF
                    if eot_id is not None:
                        logits[:, :, eot_id] = _parts.NEG_INF
                if cfg.remasking == "low_confidence":
                    score = _parts.confidence(logits, x0, dtype)
                else:
                    score = noise.uniform(x0.shape[1:])
                if all(n == 1 for n in ks):  # as above, with the proposals of every position
                    best = score.masked_fill_(blk != mask_id, _parts.NEG_INF).argmax(dim=1, keepdim=True)  # (N, 1)
                    blk.scatter_(1, best, x0.gather(1, best))
                    counts.append([1] * len(ks))
                    chosen = None
                else:
                    masked = blk == mask_id
                    chosen = _parts.top_k_mask(score.masked_fill_(~masked, _parts.NEG_INF), ks) & masked
                    torch.where(chosen, x0, blk, out=blk)
                    counts.append(chosen.sum(dim=1))
            if on_step is not None:
                if chosen is None:
                    chosen = torch.zeros_like(blk, dtype=torch.bool).scatter_(1, best, True)
                full = torch.zeros_like(x, dtype=torch.bool)
                full[:, s:e] = chosen
                _parts.report_step(on_step, nfe, x, full)
    on_device = [c for c in counts if isinstance(c, torch.Tensor)]
    synced = iter(torch.stack(on_device, dim=1).T.tolist() if on_device else [])  # one sync for all of them
    per_step = [c if isinstance(c, list) else next(synced) for c in counts]  # (steps, N)
    return _parts.generations(x, P, [list(r) for r in zip(*per_step)] if per_step else [[] for _ in prompts])


def _forward(
    model: Model, x: torch.Tensor, attention: torch.Tensor | None, prompt_index: torch.Tensor | None, cfg_scale: float
) -> torch.Tensor:
    """Logits (B, T, V); with CFG one batched call on [x; x with the prompt masked] (one NFE)."""
    if cfg_scale <= 0:
        return _parts.forward(model, x, None, attention_mask=attention).logits
    un_x = torch.where(prompt_index, torch.full_like(x, model.mask_id), x)
    mask = None if attention is None else torch.cat([attention, attention])
    both = _parts.forward(model, torch.cat([x, un_x]), range(x.shape[0]), attention_mask=mask).logits  # one NFE per prompt
    cond, uncond = both.chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)
