"""A run's identity and provenance: the hashes that name it, the folder --resume continues, and
the environment config.json records.

The config hash covers everything that can change a token (decoder config, task spec, model
fingerprint and dtype, prompt template, seed); the sample-set hash covers the samples' ids,
questions and targets. A folder is `<stamp>_<task>_<decoder>_<model>_<config hash>`, and
--resume continues the newest folder of that name whose sample set is the same. A sample's
noise seed is derived from (run seed, sample id) with the same hash, and the report groups runs
with it. Importing this module does not import torch (the report uses `digest`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dleval import __version__, launch, results

if TYPE_CHECKING:
    import torch


def digest(payload: Any) -> str:
    """SHA-256 hex of the payload's canonical JSON (sorted keys; other types by str())."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def sample_seed(seed: int, sample_id: str) -> int:
    """The noise seed of one sample: from (run seed, sample id) only, so a sample's output at
    T > 0 does not depend on its batch, its rank, or the order runs were resumed in."""
    return int(digest([seed, sample_id])[:8], 16)


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def environment(device: torch.device) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "dleval": __version__,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "thread_settings": launch.current_threads(),  # intra-op count, its source, cores, OMP_WAIT_POLICY
    }


def find_resumable(out_dir: Path, suffix: str, sample_set: str) -> tuple[Path | None, list[Path]]:
    """(the newest run folder of this configuration and sample set, folders of this configuration
    with another sample set). Newest by config.json's `created`, then name."""
    same, other = [], []
    for p in out_dir.glob(f"*_{suffix}"):
        try:
            cfg = json.loads((p / results.CONFIG).read_text())
        except (OSError, ValueError):
            continue
        (same if cfg.get("dataset_hash") == sample_set else other).append((cfg.get("created", ""), p.name, p))
    return (max(same)[2] if same else None), [p for *_, p in sorted(other)]


def slug(text: str) -> str:
    """A folder-name-safe form of an invocation name."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text)[:64].strip("-") or "run"
