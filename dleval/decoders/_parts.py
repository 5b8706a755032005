"""Pieces shared by the decoders: canvas setup, scores, commit rules, block schedules.

Conventions from decoders.md §0: scores come from the raw logits (temperature only enters the
Gumbel perturbation of the argmax); ties break deterministically by (score, then position
ascending). Scores are taken in the dtype the decoder's reference code uses: float64 for
Fast-dLLM, dParallel, d3LLM and EB; the logits' dtype for LLaDA, Prophet and Learn2PD, whose
code calls `F.softmax(logits)` as is (in bf16 that rounds the confidences and changes tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dleval.models.base import KVCache, Model
from dleval.types import Generation, OnStep, Step

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------- canvas


def make_canvas(
    model: Model, prompts: Sequence[Sequence[int]], gen_length: int, pad_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Left-pad the prompts and append gen_length masks.

    Returns the canvas x (B, P+L), the key padding mask (B, P+L) or None when no row is padded,
    and P. Left padding keeps every row's generation region at the same absolute offsets, and
    RoPE attention depends only on relative positions, so a padded row computes the same
    function as the row alone.
    """
    if not prompts:
        raise ValueError("decode() needs at least one prompt")
    P = max(len(p) for p in prompts)
    pad = model.eos_id if pad_id is None else pad_id
    x = torch.full((len(prompts), P + gen_length), model.mask_id, dtype=torch.long)
    attention = torch.ones_like(x, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if len(prompt) < P:
            x[row, : P - len(prompt)] = pad
            attention[row, : P - len(prompt)] = False
        x[row, P - len(prompt) : P] = torch.tensor(list(prompt), dtype=torch.long)
    if (x[:, :P] == model.mask_id).any():
        raise ValueError("a prompt contains the mask token id")
    mask = None if bool(attention.all()) else attention.to(model.device)
    return x.to(model.device), mask, P


def generations(x: torch.Tensor, P: int, commits: list[list[int]], finish: Sequence[str] | str = "length") -> list[Generation]:
    """Package the canvas rows after the prompt as Generations."""
    rows = x[:, P:].tolist()
    finishes = [finish] * len(rows) if isinstance(finish, str) else list(finish)
    return [Generation(tuple(r), tuple(c), f) for r, c, f in zip(rows, commits, finishes)]


def report_step(on_step: OnStep | None, nfe: int, x: torch.Tensor, committed: torch.Tensor) -> None:
    if on_step is not None:
        on_step(Step(nfe=nfe, canvas=x.clone(), committed=committed.clone()))


# ---------------------------------------------------------------------------- scores


def gumbel_argmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """argmax of exp(logits) / (-log u)^T in float64 (every reference repo); plain argmax at T=0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


# Config.score_dtype -> the dtype scores are taken in (None: the logits' own dtype).
SCORE_DTYPES: dict[str, torch.dtype | None] = {"logits": None, "float64": torch.float64}


def check_score_dtype(name: str) -> torch.dtype | None:
    if name not in SCORE_DTYPES:
        raise ValueError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}, not {name!r}")
    return SCORE_DTYPES[name]


def confidence(logits: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """softmax(logits)[tokens] in `dtype` (None: the logits' dtype); logits (..., V), tokens (...)."""
    p = torch.softmax(logits if dtype is None else logits.to(dtype), dim=-1)
    return torch.gather(p, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum p log(p + 1e-12), natural log, float64 (dParallel, d3LLM)."""
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    return -(p * torch.log(p + 1e-12)).sum(dim=-1)


def margin(logits: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """top-1 minus top-2 of the raw logits (Prophet's exit test), subtracted in `dtype` (None:
    the logits' dtype). logits (..., V) -> (...)."""
    top = torch.topk(logits if dtype is None else logits.to(dtype), 2, dim=-1).values
    return top[..., 0] - top[..., 1]


# ---------------------------------------------------------------------------- commit rules


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort each row by score descending, ties by position ascending. scores (B, T)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def top_k_mask(scores: torch.Tensor, k: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Bool (B, T): the k[b] best-scored positions of each row (deterministic ties)."""
    order = rank(scores)
    k_t = torch.as_tensor(k, device=scores.device).view(-1, 1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < k_t


def threshold_mask(scores: torch.Tensor, candidates: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """Commit every candidate that `accept`s, and always the best-scored candidate of each row
    that has one (Fast-dLLM / dParallel "forced top-1"). All (B, T); scores higher is better."""
    scores = torch.where(candidates, scores, torch.full_like(scores, NEG_INF))
    best = top_k_mask(scores, [1] * scores.shape[0]) & candidates
    return (candidates & accept) | best


def quota(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step quota (B, steps): floor(n/steps) each, the first n mod steps get one more."""
    base = mask_count.view(-1, 1) // steps
    rem = mask_count.view(-1, 1) % steps
    return base + (torch.arange(steps, device=mask_count.device).view(1, -1) < rem).long()


def check_cache(cache: str, refresh_every: int | None) -> None:
    """The settings of `block_loop`'s Fast-dLLM caches, shared by every decoder that uses it."""
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}, not {cache!r}")
    if refresh_every is not None and refresh_every < 1:
        raise ValueError("refresh_every must be >= 1 (or None: refresh at block starts only)")


def check_number(name: str, value: float, lo: float = 0.0, hi: float = math.inf, *, finite: bool = True, why: str = "") -> None:
    """A Config field must lie in [lo, hi] (finite unless `finite` is False); NaN is never valid.

    `why` says what the number is (shown in the error), e.g. "a confidence: a probability".
    """
    what = f" ({why})" if why else ""
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} must be a number, not nan{what}")
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be finite, not {value}{what}")
    if not lo <= value <= hi:
        bound = f">= {lo:g}" if hi == math.inf else f"between {lo:g} and {hi:g}"
        raise ValueError(f"{name} must be {bound}, not {value:g}{what}")


def check_blocks(gen_length: int, block_length: int) -> int:
    if gen_length <= 0 or block_length <= 0:
        raise ValueError("gen_length and block_length must be positive")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    return gen_length // block_length


# ---------------------------------------------------------------------------- threshold rules and the block-cache loop
# Added for issue 3 (fastdllm, dparallel, eb). Fast-dLLM's three loops (decoders.md §2.2-2.4) are
# one function here because dParallel and EB reuse them with another selection rule.

CACHES = ("none", "prefix", "dual")

# select(logits (1, B, V) of the current block, masked (1, B), forward index within the block)
# -> (x0 (1, B) proposed tokens, chosen (1, B) bool positions to commit).
Select = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------- EOS handling
# Added for issue 3 part 2 (d3llm, learn2pd): where an EOS is, and d3LLM's fill after it.


def first_token(x: torch.Tensor, token: int, start: int = 0) -> int | None:
    """Absolute index of the first `token` in row 0 of x (1, T) at or after `start`, or None."""
    hits = (x[0, start:] == token).nonzero()
    return start + int(hits[0, 0]) if len(hits) else None


def fill_after(x: torch.Tensor, e: int, token: int, mask_id: int) -> torch.Tensor:
    """d3LLM's early stop: every position of row 0 after e becomes `token` (committed tokens,
    not masks), whatever it held. Returns the (1, T) bool mask of the positions that were
    masks, i.e. the commits the fill made."""
    filled = torch.zeros_like(x, dtype=torch.bool)
    filled[0, e + 1 :] = x[0, e + 1 :] == mask_id
    x[0, e + 1 :] = token
    return filled


def propose(logits: torch.Tensor, temperature: float, mask_id: int) -> torch.Tensor:
    """x0 = gumbel_argmax over every token but [MASK]. logits (..., V) -> (...).

    A trained dLLM never ranks [MASK] first, so this equals the reference's plain argmax; on a
    model that does (a random one), the reference's until-no-mask loops would never end.
    """
    logits = logits.clone()
    logits[..., mask_id] = NEG_INF
    return gumbel_argmax(logits, temperature)


def entropy_threshold_mask(h: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """dParallel: commit every candidate with H <= tau, and always the lowest-entropy one
    (ties by position). All (B, T)."""
    return threshold_mask(-h, candidates, h <= tau)


def entropy_bound_mask(h: torch.Tensor, candidates: torch.Tensor, gamma: float) -> torch.Tensor:
    """EB-sampler: sort the candidates by entropy ascending (ties by position) and accept the
    first k for the largest k with sum(H_1..k) - max(H_1..k) <= gamma; at least one per row
    that has a candidate. All (B, T)."""
    h = torch.where(candidates, h.to(torch.float64), torch.full_like(h, float("inf"), dtype=torch.float64))
    order = rank(-h)  # ascending entropy, ties by position
    valid = torch.gather(candidates, 1, order)  # (B, T), candidates first
    hs = torch.where(valid, torch.gather(h, 1, order), torch.zeros_like(h))
    ok = valid & (hs.cumsum(dim=1) - hs.cummax(dim=1).values <= gamma)
    positions = torch.arange(h.shape[1], device=h.device).expand_as(ok)
    k = torch.where(ok, positions + 1, torch.zeros_like(positions)).max(dim=1, keepdim=True).values.clamp(min=1)  # (B, 1)
    accept_sorted = valid & (positions < k)
    return torch.zeros_like(candidates).scatter(1, order, accept_sorted)


def block_loop(
    model: Model,
    prompt: Sequence[int],
    gen_length: int,
    block_length: int,
    select: Select,
    *,
    cache: str = "none",
    refresh_every: int | None = None,
    skip_idle_forward: bool = False,
    on_step: OnStep | None = None,
) -> Generation:
    """Decode one prompt block by block, each block until it has no mask, one `select` per forward.

    The forwards are Fast-dLLM's (NVlabs/Fast-dLLM `llada/generate.py` @24cc59e):
    - "none": every forward is over the full canvas (`generate`, §2.2);
    - "prefix": the block's first forward is over the full canvas and keeps the K/V of
      [0, block_start); later forwards run x[block_start:] against that prefix (§2.3);
    - "dual": the first forward keeps the K/V of the whole canvas; later forwards run only the
      block, overwriting its K/V in place, against the rest of the cache (§2.4).
    A full forward also decodes (it is the block's first step) and is one NFE like any other.
    `refresh_every=N` repeats that full forward every N forwards within a block as well (N=1:
    every forward is full, which equals "none"). As in the reference, whose cached inner loop
    runs at least once, a block that its block-start forward already completed still gets one
    cached forward, which commits nothing (an entry 0 in committed_per_step) and counts as one
    NFE. `skip_idle_forward=True` (ours, a cheaper variant with the same tokens) leaves it out.
    """
    check_cache(cache, refresh_every)
    x, _, P = make_canvas(model, [prompt], gen_length)  # (1, P+L); one row, so no padding mask
    commits: list[int] = []
    for s in range(P, P + gen_length, block_length):
        e = s + block_length
        kv = None
        index = 0
        while bool((masked := x[:, s:e] == model.mask_id).any()):
            full = cache == "none" or index == 0 or (refresh_every is not None and index % refresh_every == 0)
            if full:
                out = model.forward(x)
                logits = out.logits[:, s:e]  # (1, B, V)
                kv = out.kv.keep(s) if cache == "prefix" else out.kv
            else:
                logits = _cached_forward(model, x, s, e, cache, kv)
            x0, chosen = select(logits, masked, index)
            chosen = chosen & masked
            assert bool(chosen.any()), "a selection rule must commit at least one masked position"
            x[:, s:e] = torch.where(chosen, x0, x[:, s:e])
            commits.append(int(chosen.sum()))
            if on_step is not None:
                step = torch.zeros_like(x, dtype=torch.bool)
                step[:, s:e] = chosen
                report_step(on_step, len(commits), x, step)
            index += 1
        if index == 1 and cache != "none" and refresh_every != 1 and not skip_idle_forward:
            _cached_forward(model, x, s, e, cache, kv)  # the reference's idle forward: the block has no mask left, it commits nothing
            commits.append(0)
            report_step(on_step, len(commits), x, torch.zeros_like(x, dtype=torch.bool))
    return generations(x, P, [commits])[0]


def _cached_forward(model: Model, x: torch.Tensor, s: int, e: int, cache: str, kv: KVCache | None) -> torch.Tensor:
    """The block's logits (1, B, V) from a forward against the block-start cache `kv`."""
    if cache == "prefix":
        return model.forward(x[:, s:], start=s, cache=kv).logits[:, : e - s]  # block + masked suffix in, block out
    return model.forward(x[:, s:e], start=s, cache=kv).logits  # in-place span write into kv


# ---------------------------------------------------------------------------- edit accounting
# Added for issue 15 (wino revokes committed tokens). Definitions in dleval/metrics.py.


class Edits:
    """Counts the revocations and rewrites of one canvas row span.

    `last` (1, T) holds the last token ever committed at each position (the mask id where none
    was); a commit whose token differs from an earlier, since-revoked one is a rewrite.
    """

    def __init__(self, span: torch.Tensor, mask_id: int) -> None:
        self.last = span.clone()  # (1, T)
        self.mask_id = mask_id
        self.revoked = 0
        self.rewritten = 0

    def commit(self, chosen: torch.Tensor, tokens: torch.Tensor) -> None:
        """chosen (1, T) bool positions that go from mask to `tokens` (1, T)."""
        before = self.last != self.mask_id
        self.rewritten += int((chosen & before & (self.last != tokens)).sum())
        self.last = torch.where(chosen, tokens, self.last)

    def revoke(self, revoked: torch.Tensor) -> None:
        """revoked (1, T) bool positions that go from a committed token back to the mask."""
        self.revoked += int(revoked.sum())
