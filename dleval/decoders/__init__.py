"""The decoder registry is the package itself: `dleval/decoders/<name>.py` is decoder `<name>`.

A decoder module exports a frozen `Config` dataclass (paper defaults) and
`decode(model, prompts, cfg, *, on_step=None, seeds=None) -> list[Generation]`, where `seeds`
is one int per prompt: its noise (Gumbel at T > 0, random remasking) comes from that seed alone
(`_parts.Noise`), or from the global torch RNG when None. Optional module constants:
`ALIASES` (other CLI names), `BATCHED` (False: the run loop decodes one prompt at a time),
`PAPER_MODEL` (the checkpoint its paper used, the default on a GPU) and `CPU_MODEL` (the bundled
model used by default without one), `DREAM_PAPER_MODEL` / `DREAM_CPU_MODEL` (the same for
`--model-family dream`: the Dream checkpoint its paper used, and the bundled tiny-dream), `IDLE_FORWARDS` (True: a fixed-step schedule may commit
nothing in a forward, as its reference does). An optional `check(model, cfg)` raises ValueError when the
config cannot run with that model (e.g. a missing learned filter); the run loop calls it once
before decoding. Files starting with "_" are shared parts, not decoders.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from dleval.errors import unknown


@dataclass(frozen=True)
class DecoderInfo:
    name: str
    summary: str  # first line of the module docstring
    aliases: tuple[str, ...]
    batched: bool
    paper_model: str
    cpu_model: str


def names() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def _aliases() -> dict[str, str]:
    out = {}
    for name in names():
        for alias in getattr(importlib.import_module(f"dleval.decoders.{name}"), "ALIASES", ()):
            out[alias] = name
    return out


def canonical(name: str) -> str:
    if name in names():
        return name
    aliases = _aliases()
    if name in aliases:
        return aliases[name]
    raise unknown("decoder", name, [*names(), *aliases])


def load(name: str) -> ModuleType:
    return importlib.import_module(f"dleval.decoders.{canonical(name)}")


FAMILIES = ("llada", "dream")


def info(name: str, family: str = "llada") -> DecoderInfo:
    """The decoder's summary and default models; `family` picks LLaDA- or Dream-family checkpoints."""
    if family not in FAMILIES:
        raise unknown("model family", family, list(FAMILIES))
    module = load(name)
    doc = (module.__doc__ or "").strip().splitlines()
    return DecoderInfo(
        name=canonical(name),
        summary=doc[0] if doc else "",
        aliases=tuple(getattr(module, "ALIASES", ())),
        batched=bool(getattr(module, "BATCHED", False)),
        paper_model=getattr(module, "PAPER_MODEL", "GSAI-ML/LLaDA-8B-Instruct")
        if family == "llada"
        else getattr(module, "DREAM_PAPER_MODEL", "Dream-org/Dream-v0-Instruct-7B"),
        cpu_model=getattr(module, "CPU_MODEL", "tiny") if family == "llada" else getattr(module, "DREAM_CPU_MODEL", "tiny-dream"),
    )
