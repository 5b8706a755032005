"""Dream's own sampler: `diffusion_generate` with alg origin, maskgit_plus, topk_margin or entropy.

Source: Ye et al., "Dream 7B: Diffusion Large Language Models" (arXiv 2508.15487); the
`generation_utils.py` that ships with Dream-org/Dream-v0-Instruct-7B (`DreamGenerationMixin._sample`),
read in the copy NVlabs/Fast-dLLM keeps at `dream/model/generation_utils.py` @24cc59e (its
`alg="confidence_threshold"` branch is Fast-dLLM's addition, not Dream's; the `fastdllm`
decoder covers it). One full-canvas forward per step, `steps` forwards exactly (no EOS stop);
timesteps t_i = linspace(1, eps, steps + 1):
- `origin`: each masked position is revealed with probability 1 - t_{i+1}/t_i (all at the last
  step), its token sampled from the filtered distribution;
- `maskgit_plus` / `topk_margin` / `entropy`: a confidence per masked position (the sampled
  token's probability, top-1 minus top-2 probability, or the negative entropy sum p log(p+1e-10));
  the k = int(n_masked (1 - t_{i+1}/t_i)) most confident are committed (all at the last step),
  or, with `alg_temp` > 0, k drawn without replacement from softmax(confidence / alg_temp).
Tokens: temperature scaling, then top_p, then top_k filtering; a categorical draw at T > 0,
argmax at T = 0.

The official evaluation settings (DreamLM/Dream `eval_instruct/eval.sh`, `eval/eval_dream_gen.sh`):
Instruct models T 0.1, top_p 0.9, alg entropy, steps = max_new_tokens (256 for GSM8K, 768 for
HumanEval), chat template applied; Base models T 0 (0.2 for MBPP/HumanEval), top_p 0.95, alg
origin (the default), steps = max_new_tokens, with `add_bos_token=true` (BOS prepended to the
prompt: the task's prompt style, not a decoder setting). The defaults below are the Instruct
ones, except temperature 0 (see the field).

Ties: the k positions are `torch.topk` of the row's full confidence vector (the prompt and
committed positions at -inf), exactly as the reference, not the harness's position order: at the
official T 0.1 / top_p 0.9 most distributions are one-hot after filtering, so equal entropies
are the rule and the tie order decides the output (position order decoded 0/20 prompts like the
reference in our parity check; topk's order is deterministic for a given device).
Deviations, none of which change the tokens of one prompt decoded alone: scores are taken in
the logits' dtype, as the reference; a batch row's k comes from its own mask count (the reference takes the batch mean,
which is the same number whenever every row holds gen_length masks, the only case it is fed);
random draws are made row by row, from a per-prompt generator when `seeds` is given (else the
global RNG, drawn in the reference's order for one prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = True
IDLE_FORWARDS = True  # int(n (1 - s/t)) is 0 early on (e.g. 16 masks, 16 steps: 0.999 -> 0); the last step catches up
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
PAPER_MODEL = "Dream-org/Dream-v0-Instruct-7B"  # eval_instruct/eval.sh
# CPU default: the bundled tiny (any model runs this sampler); `--model-family dream` picks tiny-dream.


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # eval_instruct/eval.sh gsm8k_cot: max_new_tokens=256
    steps: int | None = None  # None = gen_length (eval.sh: diffusion_steps = max_new_tokens)
    alg: str = "entropy"  # eval.sh (Instruct); generation_utils default "origin" (Base eval)
    # eval.sh (Instruct) samples at 0.1 (Base eval: 0, 0.2 for code); the harness default is 0 so
    # that a run is deterministic (§0.3). Reproduce the paper's sampling with -D temperature=0.1.
    temperature: float = 0.0
    top_p: float | None = 0.9  # eval.sh (Instruct); Base eval: 0.95
    top_k: int | None = None  # generation_utils default
    alg_temp: float | None = None  # generation_utils default: deterministic top-k selection
    eps: float = 1e-3  # generation_utils default: the last timestep

    def __post_init__(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {', '.join(ALGS)}, not {self.alg!r}")
        if self.gen_length <= 0 or self.total_steps <= 0:
            raise ValueError("gen_length and steps must be positive")
        _parts.check_number("temperature", self.temperature)
        if self.top_p is not None:
            _parts.check_number("top_p", self.top_p, 0.0, 1.0, why="a nucleus mass")
            if self.top_p == 0:
                raise ValueError("top_p must be in (0, 1] (None: no nucleus filter)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.alg_temp is not None:
            _parts.check_number("alg_temp", self.alg_temp)
        _parts.check_number("eps", self.eps, 0.0, 1.0, why="the last timestep")
        if not 0 < self.eps < 1:
            raise ValueError("eps must be in (0, 1)")

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps


def filter_logits(logits: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Temperature, then nucleus (top_p), then top_k, as the reference's `sample_tokens`. (N, V)."""
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > cfg.top_p
        drop = F.pad(drop[..., :-1], (1, 0), value=False)  # shifted right: keep the first token above the threshold
        logits = logits.masked_fill(torch.empty_like(drop).scatter_(-1, order, drop), torch.finfo(logits.dtype).min)  # order: a permutation
    if cfg.top_k is not None:
        k = min(cfg.top_k, logits.shape[-1])
        logits = logits.masked_fill(logits < torch.topk(logits, k)[0][..., -1, None], torch.finfo(logits.dtype).min)
    return logits


def sample_tokens(logits: torch.Tensor, cfg: Config, mask_id: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence (N,), tokens (N,)) for the masked positions' logits (N, V), per `cfg.alg`.

    The token is never [MASK]: the argmax skips it and a drawn [MASK] is replaced by that
    argmax (the draw itself is the reference's, so the random stream is the same). A trained
    model never proposes [MASK], so this equals the reference, where a sampled [MASK] would
    leave its position masked; on a random model the canvas still fills. Greedy nucleus
    sampling (T = 0, top_p < 1, no top_k) takes `_greedy_nucleus`, the same values bit for bit."""
    if cfg.temperature == 0 and cfg.top_k is None and cfg.top_p is not None and cfg.top_p < 1 and len(logits):
        return _greedy_nucleus(logits, cfg, mask_id)
    return _sample_tokens(logits, cfg, mask_id, gen)


def _sample_tokens(logits: torch.Tensor, cfg: Config, mask_id: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens` as the reference computes it: filter, softmax, confidence, token."""
    probs = torch.softmax(filter_logits(logits, cfg), dim=-1)
    conf = None
    if cfg.alg == "topk_margin":
        top = torch.sort(probs, dim=-1, descending=True).values
        conf = top[:, 0] - top[:, 1]
    elif cfg.alg == "entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    drawn = None
    if cfg.temperature > 0 and len(probs):
        # torch.distributions.Categorical(probs).sample(): normalise, one multinomial draw per row
        drawn = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, True, generator=gen).squeeze(-1)
    # The proposal is probs without [MASK]: zeroed in place, now that everything else has read probs
    # (the gather below reads x0's column, never [MASK]'s).
    x0 = probs.index_fill_(-1, _parts._index(mask_id, probs.device), 0).argmax(dim=-1)
    if drawn is not None:
        x0 = torch.where(drawn == mask_id, x0, drawn)  # a drawn [MASK] becomes the best other token
    if conf is None:
        conf = torch.gather(probs, -1, x0[:, None]).squeeze(-1)
    return conf, x0


# The confidence of a one-token nucleus: its filtered distribution is one-hot (p = 1 exactly, see
# _greedy_nucleus), so p log(p + 1e-10) sums to 0 and p(x0) = top1 - top2 = 1.
_ONE_HOT_CONF = {"entropy": 0.0, "maskgit_plus": 1.0, "topk_margin": 1.0, "origin": 1.0}


def _greedy_nucleus(logits: torch.Tensor, cfg: Config, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_sample_tokens` at T = 0 with a nucleus filter, without sorting every row's vocabulary.

    Most rows' nucleus is one token (the reference's sorted cumulative mass is above top_p at the
    first token: p_top > top_p). Such a row needs no sort: its filtered distribution keeps only the
    top token, so its probabilities are one-hot exactly (exp(0) = 1 for any faithful exp, the
    dropped logits' exp underflows to 0, 1/1 = 1) and its confidence is `_ONE_HOT_CONF`, its
    token the argmax. A row is decided that way only when p_top, computed here by a softmax of the
    unsorted row, exceeds top_p by more than a bound on its difference from the reference's
    value (the first entry of the softmax of the sorted row): the same max is subtracted and the
    same exps are summed, only in another order, and a float sum of V nonnegative terms in any
    order is within (V - 1) u of the exact sum (u = eps / 2, relative), so the two p_top differ by
    at most about (2 (V - 1) + 4) u = (V + 1) eps (two sums, two reciprocals, top_p's cast); the
    band is twice that, 2 (V + 1) eps (8.3e-5 at the tiny model's V = 348 in float32, 0.036 at
    Dream's 152k; in bfloat16 it is above 1, so every row takes the reference). A unique
    top logit follows from p_top > 1/2, so ties in the sort do not matter. [MASK] is zeroed
    before the max, so a row whose top token is [MASK] has p_top < 1/2 and goes to the reference
    too (whose zeroed one-hot row gives token 0). Every other row (a nucleus of more tokens, a
    p_top in the band, NaN) takes `_sample_tokens` itself, sort included."""
    probs = torch.softmax(logits, dim=-1)  # (N, V), the unfiltered distribution
    top, x0 = probs.index_fill_(-1, _parts._index(mask_id, probs.device), 0).max(dim=-1)  # (N,), (N,)
    sure = cfg.top_p + 2 * (logits.shape[-1] + 1) * torch.finfo(logits.dtype).eps
    hard = [j for j, p in enumerate(top.tolist()) if not p > sure]  # the step's host sync; NaN is hard
    conf = torch.full_like(top, _ONE_HOT_CONF[cfg.alg])
    if hard:
        rows = torch.tensor(hard, device=logits.device)
        c, t = _sample_tokens(logits.index_select(0, rows), cfg, mask_id, None)  # T = 0: no draw
        conf.index_copy_(0, rows, c)
        x0.index_copy_(0, rows, t)
    return conf, x0


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
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts (one seed per prompt)")
    gens = [None] * len(prompts) if seeds is None else [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds]
    steps, T, mask_id, dev = cfg.total_steps, x.shape[1], model.mask_id, x.device
    timesteps = torch.linspace(1, cfg.eps, steps + 1, device=dev)
    # k = int(n (1 - s/t)) for every mask count n and step, in the reference's float32, made once:
    # (L+1, steps) -> host. The last step takes every mask.
    share = 1 - timesteps[1:] / timesteps[:-1]  # (steps,) float32
    quota = (
        (torch.arange(cfg.gen_length + 1, device=dev, dtype=share.dtype).view(-1, 1) * share).long().tolist()
        if cfg.alg != "origin"
        else None
    )
    where_host = [list(range(P, T)) for _ in prompts]  # each row's masked positions, ascending, tracked on the host
    commits: list[list[int]] = [[] for _ in prompts]
    for i in range(steps):
        logits = model.forward(x, attention_mask=attention).logits  # (B, T, V), shift undone by the model
        chosen = torch.zeros_like(x, dtype=torch.bool) if on_step is not None or cfg.alg == "origin" else None
        if cfg.alg == "origin":
            masked = x == mask_id  # (B, T)
            t, s = timesteps[i], timesteps[i + 1]
        for row, gen in enumerate(gens):
            if cfg.alg == "origin":
                where = masked[row].nonzero().squeeze(-1)  # (n,) absolute positions
                p_transfer = 1 - s / t if i < steps - 1 else 1
                reveal = torch.rand(len(where), device=dev, generator=gen) < p_transfer
                _, x0 = sample_tokens(logits[row, where[reveal]], cfg, mask_id, gen)
                x[row, where[reveal]] = x0
                chosen[row, where[reveal]] = True
                commits[row].append(int(chosen[row].sum()))
                continue
            n = len(where_host[row])
            where = torch.tensor(where_host[row], dtype=torch.long, device=dev)  # (n,)
            conf, x0 = sample_tokens(logits[row, where], cfg, mask_id, gen)
            k = quota[n][i] if i < steps - 1 else n
            if k <= 0:
                commits[row].append(0)
                continue
            # The reference's full_confidence: the row's own canvas (no left padding), -inf off the masks.
            offset = P - len(prompts[row])
            full = torch.full((1, T - offset), float("-inf"), dtype=conf.dtype, device=dev)
            full[0, where - offset] = conf
            if not cfg.alg_temp:
                picked = torch.topk(full, k).indices[0]  # torch.topk's tie order, as the reference (see module docstring)
            else:
                picked = torch.multinomial(F.softmax(full / cfg.alg_temp, dim=-1), num_samples=k, generator=gen)[0]
            position = picked + offset  # (k,) masked positions (every other score is -inf)
            x[row, position] = x0[torch.searchsorted(where, position)]  # `where` is ascending
            done = set(position.tolist())  # the step's host sync
            where_host[row] = [t for t in where_host[row] if t not in done]
            commits[row].append(len(done))
            if chosen is not None:
                chosen[row, position] = True
        _parts.report_step(on_step, i + 1, x, chosen)
    return _parts.generations(x, P, commits)
