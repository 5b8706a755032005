"""Learn2PD: a small learned filter picks which masks of the block to commit, plus End-of-Text Prediction.

Source: Bao et al., "Learning to Parallel: Accelerating Diffusion LLMs via Learnable Parallel
Decoding" (arXiv 2509.25188); ims-kdks/Learning-to-Parallel-Decoding `llada/generate.py`
@342293c: `generate_l2p_eot` (eotp=True) and `generate_learn2parallel` (eotp=False),
`llada/eval_llada.sh`, `train.ipynb`; spec decoders.md §6.

LLaDA's semi-AR block loop, each block until it has no mask: forward the canvas, feed the block's
vector of argmax confidences (every position, decoded ones too) to the filter, commit the masked
positions whose sigmoid(filter logit) > `accept_threshold`, and also LLaDA's quota by confidence
(with steps = gen_length: the single most confident mask). End-of-Text Prediction, after each
commit: if the filter accepted an EOS, the canvas is cut after the first such position; otherwise,
if any still-masked position anywhere has EOS as its argmax, after the most confident one (first of
equal maxima). Later positions are dropped, so forwards get shorter, and the Generation's tokens
are then shorter than gen_length (finish="eos").

The filter's weights are not public, and neither is its class (`model/small_model.py`): it is
named LogisticRegression(input_dim=32), saved as `layer_2_flan.pth`, and drawn as an MLP with
one hidden layer, which is what this is: Linear(B, hidden) -> ReLU -> Linear(hidden, B). It is
trained per model by `dleval train filter --model M` (dleval/train/filter.py) and stored next to
the model as `learn2pd_filter_b{block_length}.safetensors` (+ .json with its provenance). It is
model-side state, so the decoder loads it itself: `filter=""` takes the one in the folder the model
was loaded from (`model.folder`, set by `dleval.models.load`); `filter=PATH` names a file, or a
folder holding one.

Confidences (filter input and EoTP) come from a softmax in the logits' dtype, as the reference's
`F.softmax(logits)`: in bf16 that often ties many tail EOS positions at 1.0, and the "first of
equal maxima" rule then cuts right after the answer. `score_dtype="float64"` (ours) takes them in
float64, where such ties are rare.

Differences from the reference, and why:
- Every commit stays inside the current block. In the reference, when the filter has already
  accepted some of the block's masks, LLaDA's quota for the step can exceed the masks left in the
  block (with steps < gen_length, where the quota is above 1): `torch.topk` then also picks
  positions scored -inf, and since the reference reverts x0 only at unmasked positions, masks
  after the block are committed with their argmax. That is an indexing accident, not the method
  (the paper decodes block by block), so the quota here is capped by the block's masks. With
  the paper's steps = gen_length (quota 1) it never happens.
- After a cut inside the current block, that block is shorter than the filter's input; the
  reference then feeds the filter a shorter vector, which a Linear(32, .) layer cannot take. Here
  the vector is padded with zeros (the unknown class presumably pads too; it cannot be checked).
- `committed_per_step` counts, for each forward, its commits that survive the final cut, so the
  entries sum to len(tokens); an entry can be 0 when a later cut drops everything a forward
  committed. Ties break by position, and the argmax skips [MASK] (`_parts.propose`; on a random
  model the until-no-mask loop could otherwise never end).

Batches (issue 14; the reference decodes one prompt at a time): prompts are left-padded (see
`_parts.make_canvas`) and every row has its own canvas, block, quota and forward count, so it
sees exactly the forwards it would see alone and its NFE (counted per row by `Counted`) is its
batch-1 NFE; a row with no block left leaves the forward. EoTP cuts each row at its own length,
so each step the rows are grouped by canvas width, one model call per group (rows at different
blocks share a call; the filter, quota and EoTP are evaluated per row). Right-padding the cut rows
with masked keys would keep them in one call, but changes the attention's reduction length and
so, possibly, the logits' last bits; grouping keeps them bitwise those of batch 1 (fp32 CPU:
identical tokens, commits and per-row NFE, tests/test_batched.py). On synth_gsm the tiny model
cuts every row at the same width, so the rows stay in one call. At T > 0 each row's Gumbel noise
is drawn over its own generation region from its own generator (`_parts.Noise`).
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dleval.decoders import _parts, _picks
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = True
FILTER_FILE = "learn2pd_filter_b{block}.safetensors"
PARAMS = ("hidden.weight", "hidden.bias", "out.weight", "out.bias")


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # llada/eval_llada.sh gen_length=256
    block_length: int = 32  # eval_llada.sh block_length=32; also the filter's input size
    steps: int | None = None  # None = gen_length (eval_llada.sh steps=$gen_length: the quota is one mask per forward)
    accept_threshold: float = 0.96  # eval_llada.sh accept_thres=0.96
    eotp: bool = True  # End-of-Text Prediction: method=L2P+EoT (generate_l2p_eot); False: method=L2P
    filter: str = ""  # filter file or folder; "" = <model folder>/learn2pd_filter_b{block_length}.safetensors
    temperature: float = 0.0  # eval_llada.py default
    score_dtype: str = "logits"  # generate.py: F.softmax(logits) in the logits' dtype; "float64" is ours

    def __post_init__(self) -> None:
        blocks = _parts.check_blocks(self.gen_length, self.block_length)
        if self.total_steps <= 0 or self.total_steps % blocks:
            raise ValueError(f"steps ({self.total_steps}) must be a positive multiple of the number of blocks ({blocks})")
        if not 0.0 <= self.accept_threshold <= 1.0:
            raise ValueError("accept_threshold must be between 0 and 1 (a sigmoid output)")
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")
        _parts.check_score_dtype(self.score_dtype)

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps


# ---------------------------------------------------------------------------- the filter


def filter_logits(params: Mapping[str, torch.Tensor], conf: torch.Tensor) -> torch.Tensor:
    """The filter: conf (..., B) float32 -> acceptance logits (..., B). One definition, used by
    the decoder and by the training recipe."""
    hidden = F.relu(F.linear(conf, params["hidden.weight"], params["hidden.bias"]))
    return F.linear(hidden, params["out.weight"], params["out.bias"])


def filter_path(folder: str | Path, block_length: int) -> Path:
    return Path(folder) / FILTER_FILE.format(block=block_length)


def save_filter(path: str | Path, params: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights as safetensors, provenance beside them as JSON (same name, .json)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: params[k].detach().to("cpu", torch.float32).contiguous() for k in PARAMS}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_filter(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights, read once per file version (keyed by absolute path and mtime: a retrained
    filter is read again; no `resolve()`, whose lstat per path component each decode would pay)."""
    return dict(_load(os.path.abspath(path), os.stat(path).st_mtime_ns))


@lru_cache(maxsize=8)
def _load(path: str, mtime: int) -> tuple[tuple[str, torch.Tensor], ...]:
    from safetensors.torch import load_file

    params = load_file(path)
    missing = [k for k in PARAMS if k not in params]
    if missing:
        raise ValueError(f"{path} is not a Learn2PD filter (it lacks {missing[0]})")
    return tuple((k, params[k]) for k in PARAMS)


def find_filter(model: Model, cfg: Config) -> Path:
    if cfg.filter:
        path = Path(cfg.filter).expanduser()
        if path.is_dir():
            path = filter_path(path, cfg.block_length)
    else:
        folder = getattr(model, "folder", None)
        if folder is None:
            raise ValueError("learn2pd needs a trained filter: pass filter=PATH (this model was not loaded from a folder)")
        path = filter_path(folder, cfg.block_length)
    if not path.is_file():
        raise ValueError(
            f"no Learn2PD filter for block_length {cfg.block_length} at {path}; train one with "
            f"`dleval train filter --model {getattr(model, 'folder', None) or 'MODEL'} -O block_length={cfg.block_length}`"
        )
    return path


# ---------------------------------------------------------------------------- decoding


@dataclass
class _Row:
    """One prompt's state: its canvas (cut by EoTP at its own length), block, quota and steps."""

    x: torch.Tensor  # (1, P+n): the prompt (left-padded to P) and the n generation positions left after any cut
    gen: list[int]  # x[0, P:] on the host (the decisions are taken there)
    step_of: list[int]  # (L,) which of its forwards committed each generated position (-1: none yet)
    block: int  # absolute start of the current block
    quota: list[int]  # LLaDA's quota for each step of the current block
    i: int = 0  # steps taken in the current block
    nfe: int = 0
    done: bool = False


@dataclass(frozen=True)
class _Decode:
    """What stays fixed for a whole decode, passed to each group's step as one value."""

    model: Model
    params: dict[str, torch.Tensor]  # the filter's weights, on the model's device
    rows: list[_Row]
    P: int  # prompt width
    cfg: Config
    noise: _parts.Noise | None  # None at T = 0 without seeds
    accept32: float  # accept_threshold rounded to the filter's dtype (float32), as `sigmoid(...) > accept_threshold` compares it
    mask_id: int  # the model's, read once (through `Counted` each read is a __getattr__)
    eos: int


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    device = model.device
    params = {k: v.to(device) for k, v in _filter_for(model, cfg).items()}
    x, attention, P = _parts.make_canvas(model, prompts, cfg.gen_length)  # (N, P+L), left-padded
    N, B, L = x.shape[0], cfg.block_length, cfg.gen_length
    noise = _parts.Noise(seeds, N, x.device) if seeds is not None or cfg.temperature > 0 else None  # T = 0 draws nothing
    per_block = cfg.total_steps // (L // B)
    padded = [len(p) < P for p in prompts]  # rows that need the key padding mask
    gens = x[:, P:].tolist()
    rows = [_Row(x[r : r + 1].clone(), gens[r], [-1] * L, P, _parts.quota_list(B, per_block)) for r in range(N)]
    accept32 = _picks.as_dtype(cfg.accept_threshold, params["out.bias"].dtype)  # the sigmoid's dtype
    d = _Decode(model, params, rows, P, cfg, noise, accept32, model.mask_id, model.eos_id)
    calls = 0
    while True:
        groups: dict[int, list[int]] = {}  # canvas width -> the rows of that width: one forward each
        for r, row in enumerate(rows):
            if not row.done:
                groups.setdefault(row.x.shape[1], []).append(r)
        if not groups:
            break
        for width, group in groups.items():  # on_step sees every model call (one per group)
            mask = None
            if attention is not None and any(padded[r] for r in group):
                mask = attention[group, :width]
            chosen = _step(d, group, mask)
            calls += 1
            if on_step is not None:
                _report(on_step, calls, rows, chosen, P, d.eos)
    out = []
    for row in rows:
        commits = [0] * row.nfe
        for s in row.step_of[: len(row.gen)]:  # every kept position was committed by some forward
            commits[s] += 1
        out.append(Generation(tuple(row.gen), tuple(commits), "eos" if len(row.gen) < L else "length"))
    return out


def _step(d: _Decode, group: list[int], mask: torch.Tensor | None) -> dict[int, list[int]]:
    """One forward for the rows `group` of equal canvas width (`mask`: their key padding mask, or
    None), each at its own block: commit, cut, move on (updates `d.rows`).
    Returns each row's committed positions in its generation region, up to its cut."""
    if len(group) == 1:
        return _step_one(d, group[0], mask)
    model, params, rows, P, cfg, noise = d.model, d.params, d.rows, d.P, d.cfg, d.noise
    R, B, mask_id, eos, dev = len(group), cfg.block_length, d.mask_id, d.eos, rows[group[0]].x.device
    xg = torch.cat([rows[r].x for r in group])  # (R, P+n)
    n = xg.shape[1] - P  # generation positions left after any cut
    logits = _parts.forward(model, xg, group, attention_mask=mask).logits[:, P:]  # (R, n, V): only the generation region holds masks
    x0 = _parts.propose(logits, cfg.temperature, mask_id, noise, group)  # (R, n)
    conf = _parts.confidence(logits, x0, _parts.SCORE_DTYPES[cfg.score_dtype])  # (R, n)
    gen = xg[:, P:]
    masked = gen == mask_id
    pos = torch.arange(n, device=dev)
    a = torch.tensor([rows[r].block - P for r in group], device=dev).view(-1, 1)  # each row's block, in generation coordinates
    in_block = (pos >= a) & (pos < a + B)  # (R, n)
    idx = a + torch.arange(B, device=dev)  # (R, B) the block's positions; past n after a cut inside the block
    live = idx < n
    idx = idx.clamp(max=n - 1)
    rel = (pos - a).clamp(0, B - 1)  # (R, n) position within the row's block
    block_conf = torch.where(live, conf.gather(1, idx), torch.zeros((), dtype=conf.dtype, device=dev)).to(
        torch.float32
    )  # (R, B), zero-padded
    accept = in_block & (torch.sigmoid(filter_logits(params, block_conf)) > cfg.accept_threshold).gather(1, rel) & masked
    block_masked = masked.gather(1, idx) & live  # (R, B)
    score = torch.where(block_masked, conf.gather(1, idx), torch.full_like(conf.gather(1, idx), _parts.NEG_INF))
    top = _parts.top_k_mask(score, [rows[r].quota[rows[r].i] for r in group]) & block_masked  # (R, B)
    chosen = accept | (in_block & top.gather(1, rel))
    new = torch.where(chosen, x0, gen)
    xg[:, P:] = new
    if cfg.eotp:
        cut = _end_of_text(x0, conf, masked, accept, eos)  # (R,), n: no cut
    else:
        cut = torch.full((R,), n, device=dev)
    left = ((new == mask_id) & in_block & (pos <= cut.view(-1, 1))).sum(dim=1)  # masks left in the block after the cut
    synced = torch.cat([cut, left]).tolist()  # the group's host sync
    news, chosens = new.tolist(), chosen.tolist()
    out = {}
    for j, r in enumerate(group):
        row, c = rows[r], min(synced[j], n - 1)
        out[r] = [i for i in range(c + 1) if chosens[j][i]]
        for i in out[r]:
            row.step_of[i] = row.nfe
        row.x, row.gen = xg[j : j + 1, : P + c + 1], news[j][: c + 1]
        _advance(row, synced[R + j], cfg)
    return out


def _step_one(d: _Decode, r: int, mask: torch.Tensor | None) -> dict[int, list[int]]:
    """`_step` for a group of one row `r` (issue 14: a thin step): the device takes the scores
    (argmax, confidence, the filter over the block as a slice) and the host, from one read-back,
    takes every decision (the filter's accepts, the quota, EoTP) on lists, then writes the block
    back once. After a cut inside the block, the slice is shorter and the filter's input
    zero-padded."""
    model, params, rows, P, cfg, noise = d.model, d.params, d.rows, d.P, d.cfg, d.noise
    B, mask_id, eos = cfg.block_length, d.mask_id, d.eos
    row = rows[r]
    xr, gen = row.x, row.gen  # (1, P+n), its n generation positions on the host
    n = len(gen)
    a = row.block - P  # the block [a, a + w) in generation coordinates, inside [0, n)
    w = min(B, n - a)  # shorter than B after a cut inside the block
    logits = _parts.forward(model, xr, [r], attention_mask=mask).logits[:, P:]  # (1, n, V)
    p = torch.softmax(logits, dim=-1, dtype=_parts.SCORE_DTYPES[cfg.score_dtype])  # before the argmax writes the [MASK] logit
    x0t = _parts.propose_(logits, cfg.temperature, mask_id, noise, [r])  # (1, n)
    conf_t = p.gather(-1, x0t.unsqueeze(-1)).squeeze(-1)  # (1, n)
    if w == B:  # the whole block: the slice itself, cast as .to(float32) (no copy when the scores are float32)
        block_conf = conf_t[:, a : a + B].to(torch.float32)  # (1, B)
    else:  # a cut inside the block: zero-padded to the filter's input size
        block_conf = conf_t.new_zeros((1, B), dtype=torch.float32)  # (1, B)
        block_conf[:, :w] = conf_t[:, a : a + w]  # cast as .to(float32)
    # read back whole and index on the host: a tensor index is a torch call, a list index is not
    sig = torch.sigmoid(filter_logits(params, block_conf)).tolist()[0]  # (B,) float32 values: compared with accept32; [w:] unread
    x0, conf = x0t.tolist()[0], conf_t.tolist()[0]
    cands = [i for i in range(a, a + w) if gen[i] == mask_id]  # the block's masks (it has one)
    accepted = [i for i in cands if sig[i - a] > d.accept32]
    top = _picks.pick_top_k(conf, cands, row.quota[row.i])  # ties by position
    chosen = sorted(set(accepted).union(top))
    cut = n
    if cfg.eotp:
        by_filter = [i for i in accepted if x0[i] == eos]
        opened = [i for i in range(n) if x0[i] == eos and gen[i] == mask_id]  # masks before the commit
        if by_filter:
            cut = by_filter[0]  # the first EOS the filter accepted
        elif opened:
            cut = max(opened, key=lambda i: (conf[i] != conf[i], conf[i]))  # else the most confident EOS among the masks (torch's argmax)
    for i in chosen:
        gen[i] = x0[i]
        row.step_of[i] = row.nfe  # forwards before this one
    xr[0, P + a : P + a + w].copy_(torch.frombuffer(array("q", gen[a : a + w]), dtype=torch.long))  # the step's one write
    left = sum(1 for i in cands if i <= cut and gen[i] == mask_id)  # masks left in the block after the cut
    if cut < n:
        row.x, row.gen = xr[:, : P + cut + 1], gen[: cut + 1]
    _advance(row, left, cfg)
    return {r: [i for i in chosen if i <= cut]}


def _advance(row: _Row, left: int, cfg: Config) -> None:
    """After a row's forward: count it, and move to the next block when this one has no mask
    `left` (done when the canvas no longer reaches it)."""
    row.nfe += 1
    row.i += 1
    if left == 0:
        row.block += cfg.block_length
        if row.block >= row.x.shape[1]:
            row.done = True
        else:  # nothing commits outside the current block, so what is left of it is all masks
            per_block = cfg.total_steps // (cfg.gen_length // cfg.block_length)
            row.quota, row.i = _parts.quota_list(min(cfg.block_length, row.x.shape[1] - row.block), per_block), 0


def _report(on_step: OnStep, calls: int, rows: list[_Row], chosen: dict[int, list[int]], P: int, eos: int) -> None:
    """The canvas (N, P+n_max) after a model call, with the commits of the rows it held: rows cut
    shorter than the longest are shown EOS-filled."""
    width = max(row.x.shape[1] for row in rows)
    canvas = torch.full((len(rows), width), eos, dtype=torch.long, device=rows[0].x.device)
    committed = torch.zeros_like(canvas, dtype=torch.bool)
    for r, row in enumerate(rows):
        canvas[r, : row.x.shape[1]] = row.x[0]
        for i in chosen.get(r, ()):
            committed[r, P + i] = True
    _parts.report_step(on_step, calls, canvas, committed)


def _end_of_text(x0: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor, accept: torch.Tensor, eos: int) -> torch.Tensor:
    """Where EoTP cuts each row's generation region (keep [0, cut]); n (the width) where it does not.
    All (R, n) over the generation region, taken before the commit."""
    n = x0.shape[1]
    predicted = x0 == eos
    by_filter = predicted & accept
    open_eos = predicted & masked
    best_open = torch.where(open_eos, conf, torch.full_like(conf, _parts.NEG_INF)).argmax(dim=1)  # first of equal maxima
    none = torch.full_like(best_open, n)
    return torch.where(
        by_filter.any(dim=1),
        by_filter.int().argmax(dim=1),  # the first EOS the filter accepted
        torch.where(open_eos.any(dim=1), best_open, none),  # else the most confident EOS among the masks
    )


def check(model: Model, cfg: Config) -> None:
    """Fail before a run, not per sample, when there is no usable filter."""
    _filter_for(model, cfg)


def _filter_for(model: Model, cfg: Config) -> dict[str, torch.Tensor]:
    params = load_filter(find_filter(model, cfg))
    width = params["hidden.weight"].shape[1]
    if width != cfg.block_length:
        raise ValueError(f"the Learn2PD filter was trained for block_length {width}, not {cfg.block_length}")
    return params
