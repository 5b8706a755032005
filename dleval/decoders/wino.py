"""WINO, Wide-In Narrow-Out: draft every confident mask, verify through a shadow block, revoke what fails.

Source: Hong et al., "Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs"
(arXiv 2507.18578, ICLR 2026); Feng-Hong/WINO-DLLM `LLaDA/decoding.py` @9549a1d
(`decoding_wino`), defaults from `LLaDA/configs/gsm8k.yaml`.

The canvas is [prompt | generation | shadow], the shadow a copy of the current block made of
[MASK] tokens at the block's RoPE positions. One forward per step (one NFE) with an attention
mask such that no real position sees the shadow, and shadow position i sees the whole canvas
except block position i, plus the other shadow positions: its prediction at i is a
leave-one-out verification of the token committed at i. Per step, within the current block:
- wide in: commit every mask whose confidence > `threshold` (tau1), at most
  max_accept = min(max(int(0.7 * masks), 5), 20) (the most confident ones), at least the
  single most confident mask;
- narrow out: only when this step committed more than one token, revoke (back to [MASK]) every
  previously committed block token whose shadow confidence < `threshold_back` (tau2); when that
  is at least as many as the previous step committed (30 before the first step), revoke only the
  (previous count - 1) least confident ones.
A block repeats until it has no mask; no EOS stop, so the forward count varies per prompt.

Revoked tokens are commits undone: `committed_per_step` counts every mask -> token write,
`Generation.revoked` the token -> mask writes and `Generation.rewritten` the commits that put a
different token where a revoked one stood (definitions in dleval/metrics.py).

Where this differs from the reference, and why:
- The method's summary ("re-mask committed tokens whose verified confidence falls below tau2";
  the paper itself was not read for this port) omits two rules of the code, which is followed:
  revocations are capped by the previous step's accept count, and happen only on steps that
  accepted more than one token.
- The draft argmax skips [MASK] (`_parts.propose`): a trained model never ranks it first, a
  random one could, and the reference would then "commit" a mask and leave it in the output.
- Confidences are float64 as in the reference; ties break by position instead of
  `torch.topk`'s unspecified order (decoders.md §0.3). A step (T = 0) first scores in float32 and
  keeps that choice only where a guard band shows the float64 scores make the same one (no
  confidence within the band of a threshold, no near tie at a top-k cut: `guard`, `_accept`,
  `_revoke`); otherwise it takes the float64 scores (on synth_gsm ~13% of the draft choices,
  none of the revocations). The choices, hence the tokens, are the float64 ones.
Needs a model with `custom_attention` (RoPE positions and a per-query attention mask; the native
LLaDA and Dream have it). The reference has no Dream path: on a Dream model the decoder is
unchanged and the model keeps the shadow's meaning under its logit shift, verifying block position
i from a query at i-1 that does not see the token at i (dleval/models/dream.py, "Custom
attention"); not compared with any reference. One prompt at a time (BATCHED = False), as the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _host, _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
FIRST_LAST_ACCEPT = 30  # decoding_wino: `last_accept = 30` before a block's first step
ACCEPT_FRACTION, ACCEPT_MIN, ACCEPT_MAX = 0.7, 5, 20  # decoding_wino: min(max(int(masks * 0.7), 5), 20)
FLOAT32_EXACT = (torch.float32, torch.bfloat16, torch.float16)  # logits whose float32 cast is exact (see `guard`)


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # LLaDA/configs/gsm8k.yaml generation_args.gen_length
    block_length: int = 128  # LLaDA/configs/gsm8k.yaml generation_args.block_length
    threshold: float = 0.6  # tau1, gsm8k.yaml method_args.wino.threshold (0.7 for math500)
    threshold_back: float = 0.9  # tau2, gsm8k.yaml method_args.wino.threshold_back
    temperature: float = 0.0  # gsm8k.yaml generation_args.temperature

    def __post_init__(self) -> None:
        _parts.check_blocks(self.gen_length, self.block_length)
        for name in ("threshold", "threshold_back"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise ValueError(f"{name} must be a probability in [0, 1], not {value}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")


def check(model: Model, cfg: Config) -> None:
    if not getattr(model, "custom_attention", False):
        raise ValueError(
            "wino needs a model with custom_attention (RoPE positions and a per-query attention mask), such as the native LLaDA or Dream"
        )


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    check(model, cfg)
    return _parts.one_at_a_time(model, prompts, seeds, lambda prompt, i: _decode_one(model, prompt, cfg, on_step, i))


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None, row: int) -> Generation:
    B, L, T = cfg.block_length, cfg.gen_length, cfg.temperature
    canvas = _host.Canvas(model, prompt, L + B)  # [prompt | generation | shadow]; the shadow's masks are never written
    ids, P, mask_id, device = canvas.ids, canvas.P, model.mask_id, canvas.device
    N = P + L
    commits: list[int] = []
    last: dict[int, int] = {}  # position -> the last token committed there (a commit of another one is a rewrite)
    revoked = rewritten = 0
    for s in range(P, N, B):
        e = s + B
        positions = _host.longs([*range(N), *range(s, e)], device)  # (N+B,): the shadow at the block's RoPE positions
        attention = torch.ones(1, N + B, N + B, dtype=torch.bool, device=device)
        attention[:, :N, N:] = False  # no real position sees the shadow; the shadow sees it all...
        attention[0, N:, s:e].fill_diagonal_(False)  # ...but shadow i does not see block position i
        at = list(range(s, e))  # the block's masks (blocks start masked), tracked on the host
        done: list[int] = []  # the block's committed positions
        last_accept = FIRST_LAST_ACCEPT
        while at:
            max_accept = min(max(int(len(at) * ACCEPT_FRACTION), ACCEPT_MIN), ACCEPT_MAX)
            logits = _parts.forward(model, canvas.x, [row], attention_mask=attention, positions=positions).logits  # (1, N+B, V)
            lo = at[0]
            draft = logits[:, lo : at[-1] + 1]  # (1, w, V): the span of the masks (cheaper than gathering their rows)
            accept, tokens = None, []
            if T == 0 and draft.dtype in FLOAT32_EXACT:  # float32 scores, decided where a guard band allows
                p = torch.softmax(draft, dim=-1, dtype=torch.float32)
                x0 = draft.argmax(dim=-1, keepdim=True)  # (no [MASK] logit written: the float64 path may follow)
                tokens = [t for (t,) in x0.tolist()[0]]
                if mask_id not in tokens:  # (a row that ranks [MASK] first takes the reference's path)
                    conf = p.gather(-1, x0).tolist()[0]  # [[p], ...]
                    accept = _accept([(conf[j - lo][0], j) for j in at], cfg.threshold, max_accept, guard(logits.shape[-1]))
            if accept is None:  # the reference's float64 scores
                p = torch.softmax(draft, dim=-1, dtype=torch.float64)  # before the draft may write the [MASK] logit
                if not tokens or mask_id in tokens:  # else x0 is the float32 path's argmax: _host.draft's own first step
                    x0, tokens = _host.draft(draft, T, mask_id, logits, s, e, lo)
                conf = p.gather(-1, x0).tolist()[0]
                accept = _accept([(conf[j - lo][0], j) for j in at], cfg.threshold, max_accept, None)
                assert accept is not None
            n = len(accept)
            revoke: list[int] = []
            if n > 1 and done:  # only then is the shadow's verdict read: its softmax is taken only then
                revoke = _revocations(logits, canvas, done, N - s, cfg.threshold_back, last_accept)
            for j in accept:
                token = tokens[j - lo]
                ids[j] = token
                if last.get(j, token) != token:
                    rewritten += 1
                last[j] = token
            for j in revoke:
                ids[j] = mask_id
            canvas.push()
            revoked += len(revoke)
            taken = set(accept)
            at = sorted([j for j in at if j not in taken] + revoke)
            gone = set(revoke)
            done = sorted([j for j in done if j not in gone] + accept)
            last_accept = n
            commits.append(n)
            if on_step is not None:
                canvas.report(on_step, len(commits), accept, N)
    return Generation(tuple(ids[P:N]), tuple(commits), "length", revoked=revoked, rewritten=rewritten)


def _best_first(scored: tuple[float, int]) -> tuple[float, int]:
    """Sort key: confidence descending, ties by position (`_parts.top_k_mask`'s order)."""
    return -scored[0], scored[1]


def guard(vocab: int) -> float:
    """A bound on |float32 softmax - float64 softmax| of a probability over `vocab` float32 logits,
    with a factor 2 to spare: exp and the final scaling err by a few float32 ulps, x - max by at
    most 88 ulps of exp's argument (below that exp underflows), and the sum of `vocab` terms by
    at most vocab - 1 ulps, all relative, and p <= 1 (measured on the tiny models: <= 2.1e-6,
    against 5.3e-5 here for 348 tokens)."""
    return 2 * (vocab + 100) * 2.0**-24


def _accept(scored: list[tuple[float, int]], threshold: float, max_accept: int, band: float | None) -> list[int] | None:
    """WINO's wide-in choice from (confidence, position) of every mask: every confidence >
    threshold, at most max_accept (the most confident), at least the best one. `band`: the
    confidences are float32 approximations of the reference's float64 ones, within band/2; the
    choice is returned only where they decide it as the float64 ones would (no confidence
    within band of the threshold, a gap > band at a top-k cut), else None."""
    if band is not None and any(abs(c - threshold) <= band for c, _ in scored):
        return None
    accept = [j for c, j in scored if c > threshold]
    if len(accept) > max_accept or not accept:  # too many above the threshold (or none): the most confident
        k = max_accept if accept else 1
        ranked = sorted(scored, key=_best_first)
        if band is not None and k < len(ranked) and ranked[k - 1][0] - ranked[k][0] <= band:
            return None
        accept = sorted(j for _, j in ranked[:k])
    return accept


def _revoke(scored: list[tuple[float, int]], threshold_back: float, last_accept: int, band: float | None) -> list[int] | None:
    """WINO's narrow-out choice from (shadow confidence, position) of the committed positions:
    every confidence < threshold_back; when that is at least `last_accept` of them, only the
    last_accept - 1 least confident (ties by position). `band` as in `_accept`."""
    if band is not None and any(abs(c - threshold_back) <= band for c, _ in scored):
        return None
    revoke = [j for c, j in scored if c < threshold_back]
    if len(revoke) >= last_accept:
        k = last_accept - 1
        ranked = sorted(scored)
        if band is not None and 0 < k < len(ranked) and ranked[k][0] - ranked[k - 1][0] <= band:
            return None
        revoke = sorted(j for _, j in ranked[:k])
    return revoke


def _revocations(
    logits: torch.Tensor, canvas: _host.Canvas, done: list[int], shift: int, threshold_back: float, last_accept: int
) -> list[int]:
    """The committed block positions `done` (increasing) to revoke: their shadow confidences (the
    shadow row at position + `shift`, softmax at the current token: float32 where the guard band
    decides, else the reference's float64) through `_revoke`."""
    c0, c1 = done[0], done[-1]
    current = torch.frombuffer(canvas.ids[c0 : c1 + 1], dtype=torch.long).view(1, -1, 1)  # (1, w, 1); masks inside are unused
    if not canvas.shared:
        current = current.to(canvas.device)
    shadow = logits[:, c0 + shift : c1 + shift + 1]  # (1, w, V)

    def scored(dtype: torch.dtype) -> list[tuple[float, int]]:
        back = torch.softmax(shadow, dim=-1, dtype=dtype).gather(-1, current).tolist()[0]
        return [(back[j - c0][0], j) for j in done]

    if shadow.dtype in FLOAT32_EXACT:
        revoke = _revoke(scored(torch.float32), threshold_back, last_accept, guard(logits.shape[-1]))
        if revoke is not None:
            return revoke
    return _revoke(scored(torch.float64), threshold_back, last_accept, None) or []
