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
global RNG, drawn in the reference's order for one prompt). Greedy nucleus sampling (T = 0,
top_p < 1) decides most rows' nucleus without the reference's sort of the vocabulary, with a
rounding band and the sort itself as the fallback: the same values bit for bit (see `_TOP`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Callable, Sequence
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
    leave its position masked; on a random model the canvas still fills. (`decode` takes
    `_greedy_nucleus` instead for greedy nucleus sampling: the same values bit for bit.)"""
    return _sample_tokens(logits, cfg, mask_id, gen)


def _greedy(cfg: Config) -> bool:
    """Greedy nucleus sampling: `_greedy_nucleus` applies."""
    return cfg.temperature == 0 and cfg.top_k is None and cfg.top_p is not None and cfg.top_p < 1


def _sample_tokens(logits: torch.Tensor, cfg: Config, mask_id: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens` as the reference computes it: filter, then `_score`."""
    return _score(filter_logits(logits, cfg), cfg, mask_id, gen)


def _score(filtered: torch.Tensor, cfg: Config, mask_id: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, token) per row from the filtered logits (N, V): the reference's softmax,
    confidence, draw and argmax."""
    probs = torch.softmax(filtered, dim=-1)
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


# Greedy nucleus sampling without the sort (`_greedy_nucleus`). The reference sorts each row's
# logits, and keeps the sorted prefix through the first token whose cumulative probability c_j
# (the softmax of the sorted row, cumsum) exceeds top_p. Here c_j is computed from the unsorted
# row's softmax instead (the same exps of the same differences to the same max, summed in another
# order), for the first _TOP tokens of the sorted order (topk). A float sum of V nonnegative
# terms, in any order, is within (V - 1) u of the exact sum (u = eps / 2, relative), so the two
# c_j differ by at most about (2 (V - 1) + 4) u < (V + 1) eps (two normalizers, two reciprocals,
# the cumulative sums, top_p's cast). A decision is taken only where every c_j it reads is more
# than twice that, 2 (V + 1) eps, from top_p (8.3e-5 for the tiny models' V = 348 in float32,
# 0.036 at Dream's 152k vocabulary; above 1 in bfloat16, where every row takes the sort); then
# the reference keeps the same number of tokens m. Those are the m largest logits, a set the
# order of equal logits cannot change when the m-th largest is strictly above the (m+1)-th, so
# the filter is `logits < (m-th largest)`, the reference's mask. Any other row (a boundary tie,
# a nucleus beyond _TOP, a c_j in the band, NaN) is filtered by the sort itself.
_TOP = 16  # nucleus sizes on the tiny models at top_p 0.9: 1 (87 %) to 8


@functools.lru_cache(maxsize=16)
def _one_hot_conf(alg: str, dtype: torch.dtype) -> float:
    """The confidence of a one-token nucleus. It leaves a one-hot distribution, exactly: exp(0) = 1
    for any faithful exp, the dropped logits' exps underflow to 0, 1/1 = 1. So p(x0) = 1 - 0 = 1
    (maskgit_plus, topk_margin), and the entropy sum is 1 * log(1 + 1e-10) plus -0.0 terms (0 *
    log(1e-10)): log(1 + 1e-10) in `dtype`, 0.0 in float32 (1 + 1e-10 rounds to 1), ~1e-10 in
    float64 (log is position independent: a 0-d tensor gives a row's bits, tests/test_host.py)."""
    if alg != "entropy":
        return 1.0
    return torch.log(torch.ones((), dtype=dtype) + 1e-10).item()


def _greedy_nucleus(
    logits: torch.Tensor, cfg: Config, mask_id: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, Callable[[int], torch.Tensor]]:
    """`_sample_tokens` at T = 0 with a nucleus filter, equal bit for bit, without a sort per row
    (see _TOP). Returns (rows, their confidences, token): every row not in `rows` (an index
    tensor, None when empty) has the confidence `_one_hot_conf(cfg.alg, dtype)`; row j's token is
    `token(j)`, taken only for the rows committed. A row whose top token alone clears top_p (most
    of them) is done with one softmax and a max (the step's host sync): its token is the argmax
    (its top logit is unique: p_top > 1/2). [MASK] is zeroed before the max, so a row whose top
    token is [MASK] (p_top < 1/2 without it) takes the general path, which gives the reference's
    token 0 there."""
    probs = torch.softmax(logits, dim=-1).index_fill_(-1, _parts._index(mask_id, logits.device), 0)  # (N, V) without [MASK]
    band = 2 * (logits.shape[-1] + 1) * torch.finfo(logits.dtype).eps
    sure = cfg.top_p + band
    hard = [j for j, p in enumerate(probs.amax(dim=-1).tolist()) if not p > sure]  # NaN is hard
    if not hard:
        return None, None, lambda j: probs[j].argmax()
    rows = torch.tensor(hard, device=logits.device)
    lg = logits.index_select(0, rows)  # (R, V)
    ph = torch.softmax(lg, dim=-1)  # with [MASK]: the mass the reference's filter sorts
    floor = _nucleus_floor(ph, cfg.top_p, band)
    filtered = filter_logits(lg, cfg) if floor is None else lg.masked_fill(ph < floor, torch.finfo(lg.dtype).min)
    conf, t = _score(filtered, cfg, mask_id, None)  # T = 0: no draw
    at = {j: h for h, j in enumerate(hard)}
    return rows, conf, lambda j: t[at[j]] if j in at else probs[j].argmax()


def _nucleus_floor(probs: torch.Tensor, top_p: float, band: float) -> torch.Tensor | None:
    """The smallest probability the reference's nucleus keeps, per row (R, 1), read from the
    first _TOP of the sorted order (see _TOP); None when a row cannot be decided there. probs are
    the unfiltered softmax of the rows; the sorted order of the logits is theirs (softmax is
    monotone), up to ties, which only matter at the boundary, where a decision needs the kept
    token's probability strictly above the next one's (then its logit is too). The cumulative
    sums are taken on the host, in float64."""
    floor = []
    for v in probs.topk(min(_TOP, probs.shape[-1])).values.tolist():  # (R, K): the sorted order's first K
        c = list(itertools.accumulate(v))
        j = bisect.bisect_right(c, top_p)  # the first cumulative mass c_j above top_p: the last token kept
        if not (j < len(c) - 1 and c[j] > top_p + band and (j == 0 or c[j - 1] < top_p - band) and v[j] > v[j + 1]):
            return None
        floor.append([v[j]])
    return torch.tensor(floor, dtype=probs.dtype, device=probs.device)


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
    greedy = _greedy(cfg) and cfg.alg != "origin"
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
            k = quota[n][i] if i < steps - 1 else n
            if k <= 0 and cfg.temperature == 0:  # nothing to commit, no draw to make: the scores go unused
                commits[row].append(0)
                continue
            where = torch.tensor(where_host[row], dtype=torch.long, device=dev)  # (n,)
            lg = logits[row].index_select(0, where)  # (n, V)
            # The reference's full_confidence (1, T - offset): the row's own canvas (no left padding),
            # -inf off the masks; one row, so topk and multinomial see the same values 1-D.
            offset = P - len(prompts[row])
            w = where - offset if offset else where  # (n,) the masks' columns in full_confidence
            full = torch.full((T - offset,), float("-inf"), dtype=lg.dtype, device=dev)
            if greedy:  # (T = 0, so k > 0 here)
                hard, conf, token = _greedy_nucleus(lg, cfg, mask_id)
                full.index_fill_(0, w, _one_hot_conf(cfg.alg, lg.dtype))
                if hard is not None:
                    full.index_copy_(0, w.index_select(0, hard), conf)
            else:
                conf, x0 = sample_tokens(lg, cfg, mask_id, gen)
                token = x0.__getitem__
                if k <= 0:
                    commits[row].append(0)
                    continue
                full.index_copy_(0, w, conf)
            if not cfg.alg_temp:
                picked = torch.topk(full, k).indices  # torch.topk's tie order, as the reference (see module docstring)
            else:
                picked = torch.multinomial(F.softmax(full / cfg.alg_temp, dim=-1), num_samples=k, generator=gen)
            done = [p + offset for p in picked.tolist()]  # (k,) masked positions (every other score is -inf): the step's host sync
            for p in done:
                x[row, p] = token(bisect.bisect_left(where_host[row], p))  # where_host[row] is ascending
            where_host[row] = [t for t in where_host[row] if t not in done]  # k is small: a list is the set
            commits[row].append(len(done))
            if chosen is not None:
                chosen[row, done] = True
        _parts.report_step(on_step, i + 1, x, chosen)
    return _parts.generations(x, P, commits)
