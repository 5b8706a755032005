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
  model the until-no-mask loop could otherwise never end). One prompt at a time (BATCHED = False): every row would be
  cut at its own length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
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
    path = Path(path)
    return dict(_load(str(path.resolve()), path.stat().st_mtime_ns))


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


@torch.inference_mode()
def decode(model: Model, prompts: Sequence[Sequence[int]], cfg: Config = Config(), *, on_step: OnStep | None = None) -> list[Generation]:
    params = {k: v.to(model.device) for k, v in _filter_for(model, cfg).items()}
    return [_decode_one(model, prompt, params, cfg, on_step) for prompt in prompts]


def _decode_one(model: Model, prompt: Sequence[int], params: dict[str, torch.Tensor], cfg: Config, on_step: OnStep | None) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L)
    B, mask_id, eos = cfg.block_length, model.mask_id, model.eos_id
    per_block = cfg.total_steps // (cfg.gen_length // B)
    step_of = torch.full((x.shape[1],), -1, dtype=torch.long)  # which forward committed each position
    nfe = 0
    for s in range(P, P + cfg.gen_length, B):
        if s >= x.shape[1]:
            break
        e = s + B
        k = _parts.quota((x[:, s:e] == mask_id).sum(dim=1), per_block)[0].tolist()
        i = 0
        while bool((x[:, s:e] == mask_id).any()):
            T = x.shape[1]
            logits = model.forward(x).logits  # (1, T, V)
            x0 = _parts.propose(logits, cfg.temperature, mask_id)  # (1, T)
            conf = _parts.confidence(logits, x0, _parts.SCORE_DTYPES[cfg.score_dtype])  # (1, T)
            masked = x == mask_id
            block_conf = conf[:, s:e].to(torch.float32)  # (1, n), n < B after a cut inside the block
            block_conf = F.pad(block_conf, (0, B - block_conf.shape[1]))
            accept = torch.zeros_like(masked)
            accept[:, s:e] = torch.sigmoid(filter_logits(params, block_conf))[:, : min(e, T) - s] > cfg.accept_threshold
            accept &= masked
            score = torch.where(masked[:, s:e], conf[:, s:e], torch.full_like(conf[:, s:e], _parts.NEG_INF))
            chosen = accept.clone()
            chosen[:, s:e] |= _parts.top_k_mask(score, [k[i]]) & masked[:, s:e]
            x = torch.where(chosen, x0, x)
            nfe += 1
            step_of[:T][chosen[0].cpu()] = nfe - 1
            if cfg.eotp:
                cut = _end_of_text(x0, conf, masked, accept, eos)
                if cut is not None:
                    x = x[:, : cut + 1]
                    chosen = chosen[:, : cut + 1]
            _parts.report_step(on_step, nfe, x, chosen)
            i += 1
    kept = step_of[P : x.shape[1]]
    commits = torch.bincount(kept, minlength=nfe).tolist() if nfe else []
    return _parts.generations(x, P, [commits], "eos" if x.shape[1] < P + cfg.gen_length else "length")[0]


def _end_of_text(x0: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor, accept: torch.Tensor, eos: int) -> int | None:
    """Where EoTP cuts the canvas (keep [0, cut]), or None. All (1, T), taken before the commit."""
    predicted = x0[0] == eos
    by_filter = (predicted & accept[0]).nonzero()
    if len(by_filter):
        return int(by_filter[0, 0])  # the first EOS the filter accepted
    open_eos = predicted & masked[0]
    if bool(open_eos.any()):
        return int(torch.where(open_eos, conf[0], torch.full_like(conf[0], _parts.NEG_INF)).argmax())  # first of equal maxima
    return None


def check(model: Model, cfg: Config) -> None:
    """Fail before a run, not per sample, when there is no usable filter."""
    _filter_for(model, cfg)


def _filter_for(model: Model, cfg: Config) -> dict[str, torch.Tensor]:
    params = load_filter(find_filter(model, cfg))
    width = params["hidden.weight"].shape[1]
    if width != cfg.block_length:
        raise ValueError(f"the Learn2PD filter was trained for block_length {width}, not {cfg.block_length}")
    return params
