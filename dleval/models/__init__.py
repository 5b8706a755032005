"""Load a denoiser and its tokenizer by registry name, local folder or Hugging Face hub id.

`load("tiny")` gives the bundled CPU model; `load("GSAI-ML/LLaDA-8B-Instruct")` or a folder with
a LLaDA-format `config.json` + safetensors gives the native LLaDA transformer, and a Dream-format
one (`model_type` "Dream" / `DreamModel`: Dream, DiffuCoder, Dream-Coder, their dParallel and
d3LLM students) the native Dream transformer (`models/dream.py`, logit shift undone). Weights are loaded
onto the meta device and then assigned shard by shard, so an 8B checkpoint never needs twice
its memory; on CUDA they are cast to bfloat16 as they load. The loaded model also carries
`folder` (where its files are: model-side state such as a Learn2PD filter lives there) and
`encode(text) -> ids` (for decoder parameters given as text, such as Prophet's answer prefix).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dleval import hub
from dleval.errors import UserError, did_you_mean
from dleval.models.base import Counted, ForwardOutput, KVCache, Model
from dleval.models.dream import Dream, DreamConfig, is_dream
from dleval.models.llada import LLaDA, LLaDAConfig

__all__ = [
    "CheckpointSettings", "Counted", "ForwardOutput", "KVCache", "Loaded", "Model", "REGISTRY",
    "checkpoint_settings", "load", "resolve", "resolve_device",
]  # fmt: skip

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@dataclass(frozen=True)
class Entry:
    source: str  # hub id, or a folder name under dleval/checkpoints
    description: str
    bundled: bool = False


REGISTRY: dict[str, Entry] = {
    "tiny": Entry("tiny", "bundled CPU model (~1M params) trained on synth_gsm by `dleval train tiny`", bundled=True),
    "tiny-dparallel": Entry("tiny-dparallel", "tiny distilled with dParallel certainty forcing", bundled=True),
    "tiny-d3llm": Entry("tiny-d3llm", "tiny distilled with d3LLM pseudo-trajectories", bundled=True),
    "llada-8b-instruct": Entry("GSAI-ML/LLaDA-8B-Instruct", "LLaDA-8B-Instruct (Nie et al. 2025)"),
    "llada-8b-base": Entry("GSAI-ML/LLaDA-8B-Base", "LLaDA-8B-Base"),
    "llada-1.5": Entry("GSAI-ML/LLaDA-1.5", "LLaDA-1.5 (VRPO-aligned LLaDA-8B)"),
    "dparallel-llada-8b": Entry("Zigeng/dParallel-LLaDA-8B-instruct", "dParallel-distilled LLaDA-8B-Instruct"),
    "d3llm-llada": Entry("d3LLM/d3LLM_LLaDA", "d3LLM-distilled LLaDA-8B-Instruct"),
    "tiny-dream": Entry("tiny-dream", "bundled CPU model in the Dream architecture (logit-shifted), trained like tiny", bundled=True),
    "dream-7b-instruct": Entry("Dream-org/Dream-v0-Instruct-7B", "Dream-v0-Instruct-7B (Ye et al. 2025, arXiv 2508.15487)"),
    "dream-7b-base": Entry("Dream-org/Dream-v0-Base-7B", "Dream-v0-Base-7B"),
    "diffucoder-7b-instruct": Entry("apple/DiffuCoder-7B-Instruct", "DiffuCoder-7B-Instruct (Gong et al. 2025, arXiv 2506.20639)"),
    "dream-coder-7b-instruct": Entry(
        "Dream-org/Dream-Coder-v0-Instruct-7B", "Dream-Coder-v0-Instruct-7B (Xie et al. 2025, arXiv 2509.01142)"
    ),
    "dparallel-dream-7b": Entry("Zigeng/dParallel_Dream_7B_Instruct", "dParallel-distilled Dream-v0-Instruct-7B"),
    "d3llm-dream": Entry("d3LLM/d3LLM_Dream", "d3LLM-distilled Dream-v0-Instruct-7B"),
}
# The Dream checkpoint each decoder's paper used (`--model-family dream` on a GPU without --model).
DREAM_PAPER_MODEL = "Dream-org/Dream-v0-Instruct-7B"


@dataclass
class Loaded:
    """A model ready for decoding: the denoiser, its tokenizer, and where it came from."""

    model: Model
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    folder: Path
    fingerprint: str  # config.json and samples of the weight files (_fingerprint)
    dtype: str


SETTINGS_FILE = "dleval.json"


@dataclass(frozen=True)
class CheckpointSettings:
    """What a checkpoint folder's `dleval.json` says about the checkpoint (like a
    `generation_config.json`): the decoder settings it was made for, per decoder, applied
    between the paper defaults and the task's hints; and the tasks it was trained for, when it
    is a toy trained for a few (a run on another task says so). Example:

        {"trained_for": ["synth_gsm"], "decoders": {"dparallel": {"threshold": 0.04}}}
    """

    path: Path | None = None
    decoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained_for: tuple[str, ...] = ()


def checkpoint_settings(folder: Path | None) -> CheckpointSettings:
    path = folder / SETTINGS_FILE if folder is not None else None
    if path is None or not path.is_file():
        return CheckpointSettings()
    try:
        raw = json.loads(path.read_text())
        per_decoder = raw.get("decoders", {})
        trained_for = raw.get("trained_for", [])
        if not isinstance(per_decoder, dict) or not all(isinstance(v, dict) for v in per_decoder.values()):
            raise ValueError("'decoders' must map decoder names to objects of settings")
        if not isinstance(trained_for, list) or not all(isinstance(t, str) for t in trained_for):
            raise ValueError("'trained_for' must be a list of task names")
    except (ValueError, AttributeError) as exc:
        raise UserError(f"{path} is not a valid checkpoint settings file: {exc}") from None
    return CheckpointSettings(path, {k: dict(v) for k, v in per_decoder.items()}, tuple(trained_for))


def resolve(name: str) -> tuple[str, Path | None]:
    """(display name, local folder or None when it must come from the hub)."""
    if name in REGISTRY:
        entry = REGISTRY[name]
        if entry.bundled:
            folder = CHECKPOINTS / entry.source
            if not (folder / "config.json").is_file():
                raise UserError(f"the bundled model '{name}' is not in this installation ({folder} is missing)")
            return name, folder
        name = entry.source
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"'{name}' is not a model folder: it has no config.json")
        return str(path), path
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name, None
    raise UserError(
        f"unknown model '{name}'{did_you_mean(name, REGISTRY)}: give a registry name "
        f"({', '.join(REGISTRY)}), a local folder, or a hub id like GSAI-ML/LLaDA-8B-Instruct"
    )


def _download(hub_id: str) -> Path:
    """The hub snapshot's folder; from the local cache only when the hub is evidently out of reach
    (`dleval.hub`: no ~25 s of retries before the error)."""
    offline = hub.offline_reason()
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
        with hub.offline() if offline else contextlib.nullcontext():
            return Path(snapshot_download(hub_id, allow_patterns=patterns, local_files_only=bool(offline)))
    except Exception as exc:  # offline, gated, or unknown repo: all user-facing
        why = f"offline: {offline}, and it is not in the hub cache" if offline else type(exc).__name__
        raise UserError(
            f"'{hub_id}' is not a local folder and could not be downloaded from the Hugging Face hub "
            f"({why}); download it elsewhere and pass its folder with --model"
        ) from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise UserError(f"corrupt checkpoint index {index}: {exc}") from None
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise UserError(f"no safetensors weights in {folder} (expected model.safetensors or model.safetensors.index.json)")


_SAMPLE = 1 << 20  # bytes read from each weight file at its start, middle and end


def _fingerprint(folder: Path, files: list[Path]) -> str:
    """Config plus each weight file's name, size and three 1 MiB samples of its bytes: retrained
    weights of the same architecture have the same sizes, and an 8B shard is too big to hash whole."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:16]


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for `--device` (default: cuda when available, else cpu), or a UserError
    when the name is not a device or the machine does not have it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device '{device}'{did_you_mean(str(device), DEVICE_TYPES)}: use cpu, cuda, cuda:N, mps or xpu") from None
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"dleval does not run on device '{device}': use cpu, cuda, cuda:N, mps or xpu")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
            raise UserError(
                f"device '{device}' was asked for but this machine has no CUDA device (torch {torch.__version__}: {build}); use --device cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise UserError(f"device '{device}' does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' was asked for but Apple's MPS backend is not available here; use --device cpu")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise UserError(f"device '{device}' was asked for but no Intel XPU is available here; use --device cpu")
    return dev


def load(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Loaded:
    """Load model + tokenizer. Defaults: CUDA if available (bfloat16), else CPU (float32)."""
    display, folder = resolve(name)
    if folder is None:
        folder = _download(display)
    device = resolve_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise UserError(f"corrupt config.json in {folder}: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config.json in {folder} is not a JSON object (it holds a {type(raw).__name__})")
    cfg = _config(folder, raw)
    files = _weight_files(folder)
    tokenizer = _tokenizer(folder)
    model = _build(cfg, tokenizer)
    _load_weights(model, files, device, dtype)
    model.eval()
    model.folder = folder
    model.encode = _encoder(tokenizer)
    return Loaded(model, tokenizer, display, folder, _fingerprint(folder, files), str(dtype).replace("torch.", ""))


def _special_id(tokenizer, token: str) -> int | None:
    found = tokenizer.convert_tokens_to_ids(token)
    return found if isinstance(found, int) and found != tokenizer.unk_token_id else None


def _config(folder: Path, raw: dict) -> LLaDAConfig | DreamConfig:
    """The native architecture's config named by config.json (`model_type` / `architectures`)."""
    try:
        if is_dream(raw):
            return DreamConfig.from_dict(raw)
        if raw.get("model_type") == "llada" or "LLaDAModelLM" in raw.get("architectures", []):
            return LLaDAConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid config.json in {folder}: {exc}") from None
    raise UserError(
        f"{folder} holds a '{raw.get('model_type') or 'unknown'}' model; dleval's native loader reads LLaDA- and Dream-format checkpoints"
    )


def _build(cfg: LLaDAConfig | DreamConfig, tokenizer) -> LLaDA | Dream:
    """The network on the meta device (no weights allocated), with the tokenizer's special ids."""
    with torch.device("meta"):
        if isinstance(cfg, DreamConfig):  # BOS from the checkpoint's tokenizer: Dream-Coder's differs from Dream's
            return Dream(cfg, eot_id=_special_id(tokenizer, "<|im_end|>"), bos_id=tokenizer.bos_token_id)
        return LLaDA(cfg, eot_id=_special_id(tokenizer, "<|eot_id|>"))


def _encoder(tokenizer):
    """text -> token ids without special tokens: what decoders with text parameters need."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    return encode


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        # Never the checkpoint's own code (Dream's config.json names remote classes): without
        # trust_remote_code=False, transformers would stop and ask on stdin.
        with warnings.catch_warnings():  # AutoTokenizer parses config.json; Dream's rope_scaling key is deprecated there
            warnings.filterwarnings("ignore", message=".*rope_scaling.*", category=FutureWarning)
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        # Dream's hub folders name a remote DreamTokenizer class; it is Qwen2's byte-level BPE
        # (vocab.json + merges.txt), which transformers reads natively.
        if not (folder / "vocab.json").is_file():
            raise UserError(f"could not load the tokenizer in {folder}: {exc}") from None
        from transformers import Qwen2TokenizerFast

        try:
            tok = Qwen2TokenizerFast.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as exc2:
            raise UserError(f"could not load the tokenizer in {folder}: {exc2}") from None
    tok.padding_side = "left"
    return tok


def _load_weights(model: LLaDA | Dream, files: list[Path], device: torch.device, dtype: torch.dtype) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected = dict(model.state_dict())
    seen: set[str] = set()
    for f in files:
        try:
            shard = load_file(str(f), device=str(device))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"corrupt checkpoint {f}: {exc}") from None
        unexpected = [k for k in shard if k not in expected]
        if unexpected:
            raise UserError(f"{f} has parameters the {type(model).__name__} architecture does not know, e.g. '{unexpected[0]}'")
        wrong = [k for k, v in shard.items() if tuple(v.shape) != tuple(expected[k].shape)]
        if wrong:
            k = wrong[0]
            raise UserError(
                f"the weights in {f} do not match its config.json: '{k}' has shape {list(shard[k].shape)} but the config "
                f"implies {list(expected[k].shape)} ({len(wrong)} mismatched parameters)"
            )
        shard = {k: v.to(dtype) for k, v in shard.items()}
        model.load_state_dict(shard, strict=False, assign=True)
        seen.update(shard)
    missing = [k for k in expected if k not in seen]
    if missing:
        raise UserError(f"checkpoint is missing {len(missing)} parameters, e.g. '{missing[0]}'")
