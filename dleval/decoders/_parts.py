"""Pieces shared by the decoders: canvas setup, scores, commit rules on tensors (the same rules on
the host are `_picks.py`; the threshold decoders' block loop is `_blocks.py`).

Conventions from decoders.md §0: scores come from the raw logits (temperature only enters the
Gumbel perturbation of the argmax); ties break deterministically by (score, then position
ascending). Scores are taken in the dtype the decoder's reference code uses: float64 for
Fast-dLLM, dParallel, d3LLM and EB; the logits' dtype for LLaDA, Prophet and Learn2PD, whose
code calls `F.softmax(logits)` as is (in bf16 that rounds the confidences and changes tokens).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from dleval.models.base import Counted, Model
from dleval.types import Generation, OnStep, Step

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------- noise and counted forwards


class Noise:
    """Where a decoder's random numbers come from (Gumbel noise at T > 0, random remasking).

    `seeds=None`: the global torch RNG, one draw for all the rows asked for at once (what every
    decoder did before per-sample seeds; `torch.manual_seed` makes it reproducible for one batch
    composition). With `seeds` (one int per prompt), each prompt gets its own `torch.Generator`
    and a row draws only from it, over shapes that depend on that row's own state (its block,
    its generation region; never the batch's padded prompt length). So a sample's output at
    T > 0 does not depend on the other rows of its batch, the batch size, sharding, or resume
    order (issue 11).
    """

    def __init__(self, seeds: Sequence[int] | None, n: int, device: torch.device | str) -> None:
        self.n = n
        self.device = torch.device(device)
        self.generators: list[torch.Generator] | None = None
        if seeds is not None:
            seeds = [int(s) for s in seeds]
            if len(seeds) != n:
                raise ValueError(f"seeds has {len(seeds)} entries for {n} prompts (one seed per prompt)")
            self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def uniform(self, shape: Sequence[int], rows: Sequence[int] | None = None) -> torch.Tensor:
        """float64 uniforms in [0, 1), (len(rows), *shape): row i drawn for prompt rows[i] (None: every prompt, in order)."""
        rows = range(self.n) if rows is None else rows
        if self.generators is None:
            return torch.rand((len(rows), *shape), dtype=torch.float64, device=self.device)
        return torch.stack([torch.rand(tuple(shape), generator=self.generators[r], dtype=torch.float64, device=self.device) for r in rows])


def seeds_for(seeds: Sequence[int] | None, n: int) -> list[int | None]:
    """One seed (or None) per prompt, for decoders that decode one prompt at a time; a wrong count is an error."""
    if seeds is None:
        return [None] * n
    if len(seeds) != n:
        raise ValueError(f"seeds has {len(seeds)} entries for {n} prompts (one seed per prompt)")
    return [int(s) for s in seeds]


@contextmanager
def seeded(seed: int | None, device: torch.device | str) -> Iterator[None]:
    """The global RNG seeded with `seed` while one prompt decodes, and restored afterwards.

    For decoders that decode one prompt at a time and draw their noise as their reference does
    (`torch.rand_like` in the reference's dtype): the sample's output then depends on its own seed
    only, whatever its batch mates, batch size or resume order. None: the global RNG as it is.
    """
    if seed is None:
        yield
        return
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def one_at_a_time(
    model: Model, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None, decode_one: Callable[[Sequence[int], int], Generation]
) -> list[Generation]:
    """`decode_one(prompt, row)` for each prompt in turn, each under its own seed (`seeded`): the
    loop of the decoders that decode one prompt at a time (their Gumbel noise draws from the
    global RNG, as their references do)."""
    out = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds_for(seeds, len(prompts)))):
        with seeded(seed, model.device):
            out.append(decode_one(prompt, i))
    return out


def forward(model: Model, ids: torch.Tensor, rows: Sequence[int] | None, **kwargs):
    """`model.forward(ids, **kwargs)`, telling a `Counted` model which prompts' rows `ids` holds
    (indices into decode()'s prompts), so that NFE is counted per sample. A bare model (tests,
    benchmarks) is called as is."""
    if isinstance(model, Counted):
        return model.forward(ids, rows=None if rows is None else list(rows), **kwargs)
    return model.forward(ids, **kwargs)


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
    ids, mask, P = host_canvas(model, prompts, gen_length, pad_id)
    x = torch.frombuffer(ids, dtype=torch.long).view(len(prompts), -1)  # wraps the host array
    device = model.device
    if device.type != "cpu":
        x, mask = x.to(device), None if mask is None else mask.to(device)
    return x, mask, P


def host_canvas(
    model: Model, prompts: Sequence[Sequence[int]], gen_length: int, pad_id: int | None = None
) -> tuple[array, torch.Tensor | None, int]:
    """`make_canvas`'s rows as one flat int64 host array (B * (P+L), row after row; no
    per-element conversion when a tensor wraps it), the key padding mask on the CPU, and P."""
    if not prompts:
        raise ValueError("decode() needs at least one prompt")
    P = max(len(p) for p in prompts)
    pad, mask_id = model.eos_id if pad_id is None else pad_id, model.mask_id
    if any(mask_id in p for p in prompts):
        raise ValueError("a prompt contains the mask token id")
    ids, masks = array("q"), array("q", [mask_id]) * gen_length
    for p in prompts:  # array ops: no Python loop over the tokens
        if len(p) < P:
            ids += array("q", [pad]) * (P - len(p))
        ids.extend(p)
        ids += masks
    mask = None
    if any(len(p) < P for p in prompts):
        mask = torch.tensor([[False] * (P - len(p)) + [True] * (len(p) + gen_length) for p in prompts])
    return ids, mask, P


def generations(x: torch.Tensor, P: int, commits: list[list[int]], finish: Sequence[str] | str = "length") -> list[Generation]:
    """Package the canvas rows after the prompt as Generations."""
    rows = x[:, P:].tolist()
    finishes = [finish] * len(rows) if isinstance(finish, str) else list(finish)
    return [Generation(tuple(r), tuple(c), f) for r, c, f in zip(rows, commits, finishes)]


def report_step(on_step: OnStep | None, nfe: int, x: torch.Tensor, committed: torch.Tensor) -> None:
    """Call `on_step` with copies (a listener may keep them); nothing is copied when no one listens."""
    if on_step is not None:
        on_step(Step(nfe=nfe, canvas=x.clone(), committed=committed.clone()))


# ---------------------------------------------------------------------------- scores


def gumbel_argmax(logits: torch.Tensor, temperature: float, noise: Noise | None = None, rows: Sequence[int] | None = None) -> torch.Tensor:
    """argmax of exp(logits) / (-log u)^T in float64 (every reference repo); plain argmax at T=0.

    logits (R, ..., V); u comes from `noise` for the prompts `rows` (None: the global RNG)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float64)
    if noise is None:
        u = torch.rand_like(logits, dtype=torch.float64)
    else:
        u = noise.uniform(logits.shape[1:], rows if rows is not None else range(logits.shape[0]))
    return (logits.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


# Config.score_dtype -> the dtype scores are taken in (None: the logits' own dtype).
SCORE_DTYPES: dict[str, torch.dtype | None] = {"logits": None, "float64": torch.float64}


def check_score_dtype(name: str) -> torch.dtype | None:
    if name not in SCORE_DTYPES:
        raise ValueError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}, not {name!r}")
    return SCORE_DTYPES[name]


def confidence(logits: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """softmax(logits)[tokens] in `dtype` (None: the logits' dtype); logits (..., V), tokens (...)."""
    p = torch.softmax(logits, dim=-1, dtype=dtype)  # dtype: the input is cast first, as .to(dtype)
    return p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum p log(p + 1e-12), natural log, float64 (dParallel, d3LLM)."""
    return -neg_entropy(logits)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """sum p log(p + 1e-12) = -entropy(logits), float64, one op fewer (negation is exact)."""
    p = torch.softmax(logits, dim=-1, dtype=torch.float64)
    return (p + 1e-12).log_().mul_(p).sum(dim=-1)  # log(p + eps) * p = p * log(p + eps): IEEE products commute


def neg_entropy32(logits: torch.Tensor) -> torch.Tensor:
    """-H = sum p log p from a float32 log_softmax, (..., V) -> (...): a third of `neg_entropy`'s
    float64 time, within `entropy32_band` of it. For decisions only: a caller that finds one
    within the band of flipping retakes it on `neg_entropy` (the reference's float64 scores)."""
    ls = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    return ls.exp().mul_(ls).sum(dim=-1)


def entropy32_band(vocab: int, h: float) -> float:
    """A bound on |neg_entropy32 - neg_entropy| at a position whose float32 entropy is `h`.

    With u = 2^-24 and L = ln V (the float32 log-sum-exp S lies in [1, V]): log S errs by at most
    (V + 4 + L) u (V exps of relative error <= 4u summed with a worst-case (V - 1) u, the log's
    rounding); each log p_i = (x_i - m) - log S adds u (2 |log p_i| + L); exp, the product and
    the float32 sum of V same-sign terms add (|log p_i| + 4u) p_i |log p_i| and (V - 1) u H.
    Summed with sum p_i |log p_i| = H and sum p_i log^2 p_i <= (2L + 10) H + 0.01 (terms with
    |log p| > 2L + 10 have p < e^-10 / V^2): |error| <= u [(V + 4 + 2L) + (2V + 30 + 6L) H + 1],
    taken twice over, with H <= 1.5 h + 1 (the true entropy from the float32 one, for V <= 1e6),
    plus the reference's + 1e-12 inside its log (<= V * 1e-12). No assumption on the logits'
    size: every error is relative to x - max. NaN or inf: an infinite band (always retaken)."""
    if not h == h or math.isinf(h) or vocab > 1_000_000:
        return math.inf
    L, u = math.log(vocab), 2.0**-24
    return 2 * u * ((vocab + 4 + 2 * L) + (2 * vocab + 30 + 6 * L) * (1.5 * h + 1) + 1) + vocab * 1e-12


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
    if not isinstance(k, torch.Tensor) and all(n == 1 for n in k):
        # one per row (the threshold rules' forced top-1, LLaDA at one token per step): argmax
        # returns the first of equal maxima, the same position as the stable sort, without sorting
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
    order = rank(scores)
    k_t = torch.as_tensor(k, device=scores.device).view(-1, 1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < k_t


def threshold_mask(scores: torch.Tensor, candidates: torch.Tensor | None, accept: torch.Tensor) -> torch.Tensor:
    """Commit every candidate that `accept`s, and always the best-scored candidate of each row
    that has one (Fast-dLLM / dParallel "forced top-1"). All (B, T); scores higher is better;
    candidates None: every position is one."""
    if candidates is None:  # argmax: the first of equal maxima, the stable sort's choice
        return accept.scatter(1, scores.argmax(dim=1, keepdim=True), True)
    best = scores.masked_fill(~candidates, NEG_INF).argmax(dim=1, keepdim=True)  # (B, 1)
    return (candidates & accept).scatter_(1, best, True) & candidates  # a row without candidates gets none


def quota(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step quota (B, steps): floor(n/steps) each, the first n mod steps get one more."""
    base = mask_count.view(-1, 1) // steps
    rem = mask_count.view(-1, 1) % steps
    return base + (torch.arange(steps, device=mask_count.device).view(1, -1) < rem).long()


def quota_list(masks: int, steps: int) -> list[int]:
    """`quota` of one block entered with `masks` masks, on the host: (steps,) ints."""
    return [masks // steps + (j < masks % steps) for j in range(steps)]


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


# ---------------------------------------------------------------------------- threshold rules
# Added for issue 3 (fastdllm, dparallel, eb; their block loop is `_blocks.block_loop`).

CACHES = ("none", "prefix", "dual")


def propose(
    logits: torch.Tensor, temperature: float, mask_id: int, noise: Noise | None = None, rows: Sequence[int] | None = None
) -> torch.Tensor:
    """x0 = gumbel_argmax over every token but [MASK]. logits (R, ..., V) -> (R, ...).

    A trained dLLM never ranks [MASK] first, so this equals the reference's plain argmax; on a
    model that does (a random one), the reference's until-no-mask loops would never end.
    """
    logits = logits.index_fill(-1, _index(mask_id, logits.device), NEG_INF)  # a copy
    return gumbel_argmax(logits, temperature, noise, rows)


def propose_(
    logits: torch.Tensor, temperature: float, mask_id: int, noise: Noise | None = None, rows: Sequence[int] | None = None
) -> torch.Tensor:
    """`propose` without the copy: the [MASK] logit of `logits` itself is set to -inf. For
    callers that own the logits and are done with them (scores taken first)."""
    return gumbel_argmax(logits.index_fill_(-1, _index(mask_id, logits.device), NEG_INF), temperature, noise, rows)


_INDICES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _index(i: int, device: torch.device) -> torch.Tensor:
    """The (1,) index tensor [i] on `device`, made once (an index_fill argument, not state)."""
    key = (i, device)
    if key not in _INDICES:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            _INDICES[key] = torch.tensor([i], device=device)
    return _INDICES[key]


def entropy_bound_mask(h: torch.Tensor, candidates: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """EB-sampler: sort the candidates by entropy ascending (ties by position) and accept the
    first k for the largest k with sum(H_1..k) - max(H_1..k) <= gamma; at least one per row
    that has a candidate. All (B, T); candidates None: every position is one."""
    if candidates is None:
        return neg_entropy_bound_mask(-h.to(torch.float64), gamma)
    h = torch.where(candidates, h.to(torch.float64), torch.full_like(h, float("inf"), dtype=torch.float64))
    order = rank(-h)  # ascending entropy, ties by position
    valid = torch.gather(candidates, 1, order)  # (B, T), candidates first
    hs = torch.where(valid, torch.gather(h, 1, order), torch.zeros_like(h))
    ok = valid & (hs.cumsum(dim=1) - hs.cummax(dim=1).values <= gamma)
    positions = torch.arange(h.shape[1], device=h.device).expand_as(ok)
    k = torch.where(ok, positions + 1, torch.zeros_like(positions)).max(dim=1, keepdim=True).values.clamp(min=1)  # (B, 1)
    accept_sorted = valid & (positions < k)
    return torch.zeros_like(candidates).scatter(1, order, accept_sorted)


def neg_entropy_bound_mask(v: torch.Tensor, gamma: float) -> torch.Tensor:
    """`entropy_bound_mask` with every position a candidate, given v = -H (float64, (B, T)).

    The same decisions in fewer ops: sorting v descending is sorting H ascending (stable: ties by
    position), and on the sorted values, with IEEE negation exact and rounding symmetric,
    cumsum(v) - cummin(v) = -(sum(H_1..k) - max(H_1..k)) bit for bit."""
    vs, order = torch.sort(v, dim=1, descending=True, stable=True)
    ok = vs.cumsum(dim=1) - vs.cummin(dim=1).values >= -gamma
    ks = torch.arange(1, v.shape[1] + 1, device=v.device)  # (T,) k for each sorted position
    k = torch.where(ok, ks, 0).amax(dim=1, keepdim=True).clamp_(min=1)  # (B, 1)
    return torch.empty_like(ok).scatter_(1, order, ks <= k)  # order is a permutation: every position written


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
        self._rewritten: list[torch.Tensor] = []  # (0-d) per commit, on the device: summed when read

    @property
    def rewritten(self) -> int:
        return int(torch.stack(self._rewritten).sum()) if self._rewritten else 0

    def commit(self, chosen: torch.Tensor, tokens: torch.Tensor, at: int = 0) -> None:
        """chosen (1, n) bool positions [at, at + n) that go from mask to `tokens` (1, n)."""
        last = self.last[:, at : at + chosen.shape[1]]  # view, written in place
        if self.revoked:  # a rewrite needs an earlier commit at a chosen (so since revoked) position
            self._rewritten.append((chosen & (last != self.mask_id) & (last != tokens)).sum())
        torch.where(chosen, tokens, last, out=last)

    def revoke(self, revoked: torch.Tensor, n: int | None = None) -> None:
        """revoked (1, n) bool positions that go from a committed token back to the mask; `n`:
        their number, when the caller knows it."""
        self.revoked += int(revoked.sum()) if n is None else n
