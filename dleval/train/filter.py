"""`dleval train filter --model M`: record Extremely-Greedy-Parallel traces on M and train its Learn2PD filter.

Source: ims-kdks/Learning-to-Parallel-Decoding `llada/generate_training_data.py` @342293c (the
oracle) and `train.ipynb` (the training); spec decoders.md §6.1. For each prompt:

1. reference: the LLaDA low-confidence sampler, steps = gen_length, T = 0 (dleval's `llada`);
2. the EGP oracle re-decodes block by block; at every forward it records the block's vector of
   argmax confidences and, per position, whether the argmax equals the reference token, then
   commits exactly the positions whose argmax already equals the reference; when the block's
   argmax vector is the same as at the previous forward, the reference is pasted into the block
   so the run cannot stall (the record of that forward is kept).

The filter (`dleval.decoders.learn2pd.filter_logits`) is then fit to those (confidences, labels)
pairs: a seeded 80/10/10 split, BCE-with-logits on all B outputs, AdamW lr 3e-3, full-batch
epochs (40,000 in the notebook). Deterministic: fixed seed, fixed thread count, CPU training.
The paper draws its prompts from a FLAN subset; this recipe takes them from a task's split (by
default synth_gsm's "valid" stream, which neither training nor evaluation uses), rendered with
the task's prompt style. The filter is written next to the model:
`<model folder>/learn2pd_filter_b{block_length}.safetensors` (+ .json with this provenance), or
in `--out`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dleval import models, prompts, tasks
from dleval.decoders import _parts, learn2pd, llada
from dleval.errors import UserError
from dleval.models.base import Model


@dataclass(frozen=True)
class FilterConfig:
    task: str = "synth_gsm"  # where the prompts come from (the paper: FLAN inputs)
    split: str = "valid"  # a split the evaluation does not use
    samples: int = 256  # prompts traced
    gen_length: int | None = None  # None: the task's hint, else 256 (eval_llada.sh)
    block_length: int | None = None  # None: the task's hint, else 32; the filter's input size
    hidden: int = 32  # hidden units (the class is not public; an MLP with one hidden layer is drawn)
    epochs: int = 40000  # train.ipynb: 40,000 full-batch epochs
    lr: float = 3e-3  # train.ipynb: AdamW lr 0.003
    accept_threshold: float = 0.96  # only for the metrics reported: eval_llada.sh accept_thres
    batch_size: int = 16  # prompts per reference decoding batch
    seed: int = 0
    threads: int = 1  # the tiny model's matmuls are too small for a second thread to pay off


def egp_traces(model: Model, prompt: list[int], reference: torch.Tensor, gen_length: int, block_length: int) -> tuple[list, list, list]:
    """The EGP oracle on one prompt, given its reference generation (L,): ([block confidences
    (B,) float32], [is_correct (B,) float32], the final tokens). The oracle only ever commits
    reference tokens, so the final tokens are the reference."""
    x, _, P = _parts.make_canvas(model, [prompt], gen_length)  # (1, P+L)
    ref = torch.cat([x[0, :P], reference.to(x.device)])  # (P+L,)
    confs, labels = [], []
    for s in range(P, P + gen_length, block_length):
        e = s + block_length
        previous = None
        while bool((x[0, s:e] == model.mask_id).any()):
            logits = model.forward(x).logits[:, s:e]  # (1, B, V)
            x0 = _parts.propose(logits, 0.0, model.mask_id)[0]  # (B,), as learn2pd proposes
            correct = x0 == ref[s:e]
            confs.append(_parts.confidence(logits, x0[None])[0].to(torch.float32).cpu())
            labels.append(correct.to(torch.float32).cpu())
            if previous is not None and bool((x0 == previous).all()):
                x[0, s:e] = ref[s:e]
                continue
            x[0, s:e] = torch.where(correct, x0, x[0, s:e])
            previous = x0
    return confs, labels, x[0, P:].tolist()


def fit(
    X: torch.Tensor, Y: torch.Tensor, cfg: FilterConfig, log: Callable[[str], None] = print
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the filter on (N, B) confidences and labels; returns (parameters, metrics)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(X), generator=gen)
    X, Y = X[order], Y[order]
    n_train, n_val = int(len(X) * 0.8), int(len(X) * 0.1)
    splits = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, len(X))}
    B = X.shape[1]
    torch.manual_seed(cfg.seed)
    hidden, out = torch.nn.Linear(B, cfg.hidden), torch.nn.Linear(cfg.hidden, B)  # PyTorch's default init, seeded
    params = {"hidden.weight": hidden.weight, "hidden.bias": hidden.bias, "out.weight": out.weight, "out.bias": out.bias}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr)
    Xt, Yt = X[splits["train"]], Y[splits["train"]]
    for epoch in range(cfg.epochs):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(learn2pd.filter_logits(params, Xt), Yt)
        loss.backward()
        optimizer.step()
        if cfg.epochs >= 10 and (epoch + 1) % (cfg.epochs // 10) == 0:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {loss.item():.4f}")
    metrics: dict[str, Any] = {}
    with torch.no_grad():
        for name, part in splits.items():
            xs, ys = X[part], Y[part]
            if not len(xs):
                continue
            logits = learn2pd.filter_logits(params, xs)
            accepted = torch.sigmoid(logits) > cfg.accept_threshold
            metrics[name] = {
                "examples": len(xs),
                "loss": round(F.binary_cross_entropy_with_logits(logits, ys).item(), 5),
                "accept_rate": round(accepted.float().mean().item(), 5),
                "precision": round((ys[accepted].mean().item() if accepted.any() else 1.0), 5),  # accepted and correct
                "label_rate": round(ys.mean().item(), 5),
            }
    return {k: v.detach() for k, v in params.items()}, metrics


def train(
    model_name: str, cfg: FilterConfig, out: Path | None = None, log: Callable[[str], None] = print, device: str | None = None
) -> dict:
    """Trace, fit and save; returns the provenance written beside the weights."""
    if cfg.samples < 1 or cfg.epochs < 0 or cfg.hidden < 1 or cfg.batch_size < 1:
        raise UserError("samples, hidden and batch_size must be >= 1, epochs >= 0")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    loaded = models.load(model_name, device=device)
    spec = tasks.load_task(cfg.task, {"split": cfg.split})
    data_dir = os.environ.get("DLEVAL_DATA_DIR")
    samples = tasks.load_samples(spec, Path(data_dir) if data_dir else None)[: cfg.samples]
    L = cfg.gen_length or spec.generation.gen_length or 256
    B = cfg.block_length or spec.generation.block_length or 32
    try:
        ref_cfg = llada.Config(gen_length=L, block_length=B, steps=L)
    except ValueError as exc:
        raise UserError(f"invalid filter recipe settings: {exc}") from None
    cfg = replace(cfg, gen_length=L, block_length=B)
    ids = [prompts.render(s, spec.prompt, loaded.tokenizer).ids for s in samples]
    log(f"tracing {len(ids)} {spec.name}/{cfg.split} prompts on {loaded.name} (gen {L}, block {B})")
    confs, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(ids), cfg.batch_size):
            batch = ids[start : start + cfg.batch_size]
            for prompt, gen in zip(batch, llada.decode(loaded.model, batch, ref_cfg)):
                c, y, _ = egp_traces(loaded.model, prompt, torch.tensor(gen.tokens), L, B)
                confs += c
                labels += y
    X, Y = torch.stack(confs), torch.stack(labels)  # (N, B)
    log(f"{len(X)} oracle steps recorded ({Y.mean().item():.1%} of positions correct); training the filter")
    params, metrics = fit(X, Y, cfg, log)
    folder = out or loaded.folder
    path = learn2pd.filter_path(folder, B)
    meta = {
        "recipe": "dleval train filter",
        "model": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "architecture": f"Linear({B}, {cfg.hidden}) -> ReLU -> Linear({cfg.hidden}, {B}), sigmoid acceptance",
        "config": asdict(cfg),
        "oracle_steps": len(X),
        "metrics": metrics,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    learn2pd.save_filter(path, params, meta)
    meta["path"] = str(path)
    return meta
