"""What a run runs with: the decoder config, the model, and whether the prompts fit it.

A decoder's settings are layered paper defaults <- the checkpoint's `dleval.json` <- the task's
generation hints (fields the decoder has and the user did not set) <- -D, and the source of each
field is kept for config.json. Without --model the bundled tiny model is chosen when there is no
CUDA device, else the checkpoint the decoder's paper used. A prompt plus the decoder's canvas
must fit the model's positions: `--too-long` says whether an overflow refuses the run or is
recorded as a per-sample error. `dleval.run` wires these; `dleval.sweep` resolves its baseline
with the same functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from dleval import decoders, options, prompts, tasks
from dleval.errors import UserError
from dleval.types import Sample

TOO_LONG = ("error", "record")  # --too-long: refuse the run, or record those samples as errors


def settings(
    module: Any, hints: tasks.GenerationHints, overrides: dict[str, Any], checkpoint: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(merged settings, field -> source) for paper defaults <- checkpoint <- task hints <- -D."""
    fields = set(options.field_names(module.Config))
    user = {options.ALIASES.get(k, k) for k in overrides}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in checkpoint.items():
        key = options.ALIASES.get(key, key)
        merged[key] = value
        sources[key] = "checkpoint"
    if hints.gen_length is not None and "gen_length" in fields and "gen_length" not in user:
        merged["gen_length"], sources["gen_length"] = hints.gen_length, "task"
    if hints.block_length is not None and "block_length" in fields and "block_length" not in user:
        gen = overrides.get("gen_length", merged.get("gen_length"))
        single_block = hints.block_length == hints.gen_length
        merged["block_length"] = gen if single_block and gen is not None else hints.block_length
        sources["block_length"] = "task"
    for hint, value in dataclasses.asdict(hints).items():  # every other hint: taken as is
        if hint not in ("gen_length", "block_length") and value is not None and hint in fields and hint not in user:
            merged[hint], sources[hint] = value, "task"
    merged.update(overrides)
    sources.update({options.ALIASES.get(k, k): "-D" for k in overrides})
    return merged, sources


def decoder_config(
    module: Any, hints: tasks.GenerationHints, overrides: dict[str, Any], name: str, checkpoint: Mapping[str, Any] | None = None
) -> Any:
    """Paper defaults <- the checkpoint's settings <- task hints (fields the decoder has and the
    user did not set) <- -D. Errors name the decoder `name`."""
    merged, _ = settings(module, hints, overrides, checkpoint or {})
    return options.build(module.Config, merged, f"decoder '{name}'")


def choose_model(requested: str | None, info: decoders.DecoderInfo, log: Callable[[str], None]) -> str:
    if requested:
        return requested
    if torch.cuda.is_available():
        log(f"using {info.paper_model}, the checkpoint the {info.name} paper evaluated (pass --model to choose)")
        return info.paper_model
    log(f"no CUDA device: using the bundled model '{info.cpu_model}' (pass --model to choose)")
    return info.cpu_model


def max_positions(model: Any) -> int | None:
    """The model's position limit (LLaDA's max_sequence_length), or None when it states none."""
    for holder in (model, getattr(model, "cfg", None), getattr(model, "config", None)):
        for name in ("max_sequence_length", "max_position_embeddings"):
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def length_check(
    samples: list[Sample], rendered: Mapping[str, prompts.Rendered], canvas: int | None, limit: int | None, model: str, how: str, log
) -> set[str]:
    """Ids of samples whose prompt + canvas exceed the model's positions (recorded as errors
    with --too-long record); any such sample is one sentence and exit 2 otherwise."""
    if limit is None or canvas is None:
        return set()
    if canvas >= limit:
        raise UserError(f"gen_length {canvas} does not fit model '{model}', which has {limit} positions: choose a smaller gen_length")
    too = [s for s in samples if len(rendered[s.id].ids) + canvas > limit]
    if not too:
        return set()
    longest = max(too, key=lambda s: len(rendered[s.id].ids))
    what = (
        f"{len(too)} of {len(samples)} prompts plus the {canvas}-token canvas exceed the {limit} positions of model '{model}' "
        f"(the longest: sample {longest.id}, {len(rendered[longest.id].ids)} prompt tokens)"
    )
    if how == "error":
        raise UserError(f"{what}; pass a model with a longer context, a smaller gen_length, or --too-long record to run the rest")
    log(f"{what}: they are recorded as errors (--too-long record)")
    return {s.id for s in too}
