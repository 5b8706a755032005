"""`dleval train distill`: dParallel certainty forcing and d3LLM pseudo-trajectory distillation.

Both methods fine-tune a student (initialised from the teacher) on the teacher's own decodes:

- dParallel (Chen et al., arXiv 2509.26488; czg1225/dParallel `LLaDA/llada_train.py` @2ca4d14,
  decoders.md §3.2): teacher responses from the LLaDA baseline at one token per step, only correct
  ones kept. Semi-autoregressive masking per example: a segment n ~ U{0..N} of `block_length`
  tokens (the last one runs to the padded end), earlier blocks clean, the segment masked at rate
  t = 0.5, later positions all MASK and outside the loss; a second pass with the complementary
  mask. Loss = CE_A + CE_Ā + β (Ent_A + Ē), the entropy of softmax(logits / 0.5) taken over masked
  positions whose argmax is already correct. β = 2 (LLaDA).
- d3LLM (arXiv 2601.07568; hao-ai-lab/d3LLM `distill_2_training/d3llm_llada_train.py` @e5bfcac,
  decoders.md §4.4): the same segments, but the mask inside the segment is the teacher's own
  decoding order (recorded through the decoder's `on_step` hook): the state with
  `block_start + floor((1 - r) * b)` steps taken, where r ~ U(r_lo, 0.8) and r_lo rises from 0 to
  0.8 over training; the segment length follows the progressive list (16, 16, 24, 24, 32, 32), one
  value per epoch, interpolated within it; the segment is drawn over the true response length.
  Loss = (CE + CE_complementary + 2 Ent(correct masked)) / 4, no entropy term on the second pass.
  [quirk, kept] The reference indexes its saved states so that state i has i+1 tokens unmasked;
  `order < index + 1` below reproduces that.

The reference trains 8B models with LoRA; here `lora_rank = 0` (default) is full fine-tuning, the
sensible choice for a 1M-parameter student, and `lora_rank > 0` wraps every projection in a LoRA
adapter that is merged into the weights before saving. Deterministic: seeded data order, masks
and init; a fixed thread count.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dleval.decoders import llada
from dleval.models import Loaded
from dleval.models.base import Counted
from dleval.models.llada import LLaDA
from dleval.tasks import synth_gsm
from dleval.train.tiny import chat_prompt, eta, save_folder, task_gen_length
from dleval.types import Step

METHODS = ("dparallel", "d3llm")
# Tuned on the bundled tiny model (one thread; README "Distillation"). dParallel, chosen on 2000
# "valid" problems (teacher 94.6%): 3072 prompts x 3 epochs at 1e-4 give 95.3% at 6.3 NFE
# (threshold 0.04); at the threshold nearest that NFE, 1536 x 6 gave 94.7% at 6.3, 1536 x 6 at 5e-5
# 94.6% at 6.1, 3072 x 6 94.8% at 6.7: more steps make the student confident sooner than right.
# d3LLM's loss is a quarter of dParallel's and its masks hide the readings the teacher committed
# last, so the student must learn to compute them in parallel: 6 epochs at 1e-4..4e-4 left it at
# 76-85% (200 "valid" problems); at 1e-3, 18 epochs reach 92.5% and 30 epochs 93.5% with the whole
# answer in one forward.
METHOD_DEFAULTS: dict[str, dict[str, int | float]] = {
    "dparallel": {"prompts": 3072, "epochs": 3, "lr": 1e-4},
    "d3llm": {"prompts": 1536, "epochs": 30, "lr": 1e-3},
}


@dataclass(frozen=True)
class DistillConfig:
    method: str = "dparallel"  # dparallel | d3llm
    prompts: int | None = None  # synth_gsm prompts from the "distill" stream (disjoint from test); None: METHOD_DEFAULTS
    gen_length: int | None = None  # the teacher's canvas; None: synth_gsm's generation length (40)
    block_length: int | None = None  # dParallel masking segment (llada_train.py block_size = 32); None: gen_length, the task's one block
    block_sizes: tuple[int, ...] = (16, 16, 24, 24, 32, 32)  # d3LLM progressive segment lengths, one per epoch
    epochs: int | None = None  # None: METHOD_DEFAULTS; the papers train 6 epochs (dParallel, d3LLM)
    batch_size: int = 32
    lr: float | None = None  # None: METHOD_DEFAULTS; the papers use 2e-5 for LoRA on 8B
    weight_decay: float = 0.01  # both papers
    grad_clip: float = 1.0  # both papers
    mask_ratio: float = 0.5  # dParallel fixed t
    mask_eps: float = 1e-3  # dParallel p = (1 - eps) t + eps
    min_mask_ratio: float = 0.0  # d3LLM r_lo start
    max_mask_ratio: float = 0.8  # d3LLM r_lo end and upper bound
    beta: float = 2.0  # entropy weight: dParallel LLaDA 2 (Dream 1); d3LLM 2.0
    temperature: float = 0.5  # T_e of the certainty-forcing entropy
    lora_rank: int = 0  # 0 = full fine-tuning; >0 = LoRA on all projections (r = alpha, as both papers)
    teacher_batch: int = 128
    seed: int = 0
    threads: int = 1  # the bundled students were trained with 1 thread; the same count reproduces them

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.gen_length is None:
            object.__setattr__(self, "gen_length", task_gen_length())
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        if self.gen_length % self.block_length:
            raise ValueError("gen_length must be a multiple of block_length")


@dataclass(frozen=True)
class TeacherSample:
    """One teacher decode: prompt ids, the canvas it produced, and when each position was committed."""

    prompt: tuple[int, ...]
    canvas: tuple[int, ...]  # gen_length ids (answer + EOS padding)
    order: tuple[int, ...]  # order[j] = the forward (0-based) that committed canvas position j
    answer_length: int  # tokens before the first EOS
    correct: bool


# ---------------------------------------------------------------------------- teacher data


def teacher_samples(loaded: Loaded, cfg: DistillConfig, log=print) -> list[TeacherSample]:
    """Decode `cfg.prompts` distill-stream problems with the LLaDA baseline (one token per forward)."""
    tok = loaded.tokenizer
    task = synth_gsm.Config()
    problems = [synth_gsm.problem("distill", i, task) for i in range(cfg.prompts)]
    decoder_cfg = llada.Config(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.gen_length)
    out: list[TeacherSample] = []
    started = time.time()
    eos = loaded.model.eos_id
    for start in range(0, len(problems), cfg.teacher_batch):
        chunk = problems[start : start + cfg.teacher_batch]
        prompts = [tok(chat_prompt(p.question), add_special_tokens=False)["input_ids"] for p in chunk]
        orders = torch.full((len(chunk), cfg.gen_length), -1, dtype=torch.long)
        gens = llada.decode(Counted(loaded.model), prompts, decoder_cfg, on_step=_order_recorder(orders, cfg.gen_length))
        for p, prompt, gen, order in zip(chunk, prompts, gens, orders.tolist()):
            text = tok.decode(list(gen.tokens), skip_special_tokens=True)
            length = next((i for i, t in enumerate(gen.tokens) if t == eos), len(gen.tokens))
            out.append(TeacherSample(tuple(prompt), gen.tokens, tuple(order), length, text.strip().endswith(f"#### {p.value}")))
        log(f"teacher: {len(out)}/{len(problems)} decoded ({eta(started, len(out), len(problems))})")
    return out


def _order_recorder(orders: torch.Tensor, gen_length: int):
    """An on_step hook writing, into `orders` (B, L), the forward that committed each position."""

    def record(step: Step) -> None:
        P = step.canvas.shape[1] - gen_length
        orders[step.committed[:, P:].cpu()] = step.nfe - 1

    return record


# ---------------------------------------------------------------------------- masking


def segment(rng: random.Random, response_len: int, block: int, total: int) -> tuple[int, int]:
    """[start, end) of the active segment, relative to the response; the last one runs to `total`.

    The reference draws n ~ U{0..response_len // block}; when the length is a multiple of the
    block its last draw is an empty segment (no loss at all). That is rare at the papers' 384/32
    and half of all draws for a 32-token response, so n stops at the last non-empty segment.
    """
    blocks = max(math.ceil(response_len / block) - 1, 0)
    n = rng.randint(0, blocks)
    start = n * block
    return start, total if n == blocks else start + block


def dparallel_masks(
    rng: random.Random, gen: torch.Generator, L: int, cfg: DistillConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked, masked_complement, after) bool vectors over the L response positions."""
    start, end = segment(rng, L, cfg.block_length, L)
    p = (1 - cfg.mask_eps) * cfg.mask_ratio + cfg.mask_eps
    inside = torch.zeros(L, dtype=torch.bool)
    inside[start:end] = True
    draw = torch.rand(L, generator=gen) < p
    after = torch.zeros(L, dtype=torch.bool)
    after[end:] = True
    return draw & inside, ~draw & inside, after


def d3llm_masks(
    rng: random.Random, sample: TeacherSample, ratio: float, block: int, L: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks from the teacher's decoding order: positions not yet committed at the chosen state."""
    start, end = segment(rng, max(sample.answer_length, 1), block, L)
    index = start + int((1 - ratio) * (end - start))
    order = torch.tensor(sample.order)
    still_masked = order >= index + 1  # state `index` has index + 1 committed tokens (reference quirk)
    inside = torch.zeros(L, dtype=torch.bool)
    inside[start:end] = True
    after = torch.zeros(L, dtype=torch.bool)
    after[end:] = True
    return still_masked & inside, ~still_masked & inside, after


def block_size_at(progress: float, sizes: tuple[int, ...]) -> int:
    """d3LLM's progressive segment length at training progress in [0, 1] (epochs = len(sizes))."""
    epoch = min(int(progress * len(sizes)), len(sizes) - 1)
    if epoch == len(sizes) - 1:
        return sizes[-1]
    within = progress * len(sizes) - epoch
    return int(sizes[epoch] + within * (sizes[epoch + 1] - sizes[epoch]))


# ---------------------------------------------------------------------------- losses


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over masked positions; logits (B, T, V), targets/masked (B, T)."""
    if not masked.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[masked], targets[masked])


def certainty_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean entropy of softmax(logits / T) over masked positions whose argmax equals the target."""
    correct = (logits.argmax(dim=-1) == targets) & masked
    if not correct.any():
        return logits.sum() * 0.0
    p = torch.softmax(logits / temperature, dim=-1)
    h = -(p * torch.log(p + 1e-12)).sum(dim=-1)  # (B, T)
    return (h * correct).sum() / correct.sum()


def distill_loss(
    model: nn.Module, ids: torch.Tensor, masked: torch.Tensor, masked_c: torch.Tensor, after: torch.Tensor, mask_id: int, cfg: DistillConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's loss on full sequences `ids` (B, T); masks are (B, T) bool."""
    noisy = torch.where(masked | after, torch.full_like(ids, mask_id), ids)
    noisy_c = torch.where(masked_c | after, torch.full_like(ids, mask_id), ids)
    logits = model.forward(noisy).logits
    logits_c = model.forward(noisy_c).logits
    ce, ce_c = masked_ce(logits, ids, masked), masked_ce(logits_c, ids, masked_c)
    ent = certainty_entropy(logits, ids, masked, cfg.temperature)
    if cfg.method == "dparallel":
        ent_c = certainty_entropy(logits_c, ids, masked_c, cfg.temperature)
        loss = ce + ce_c + cfg.beta * (ent + ent_c)
    else:
        loss = (ce + ce_c + cfg.beta * ent) / 4.0
    return loss, {"ce": ce.item(), "ce_c": ce_c.item(), "entropy": ent.item()}


# ---------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, with A ~ N(0, 1/r) and B = 0 so training starts at the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, gen: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / math.sqrt(rank))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        base.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * (self.B @ self.A)
        self.base.weight.requires_grad_(True)
        return self.base


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def add_lora(model: LLaDA, rank: int, seed: int) -> None:
    """Freeze the model and wrap every block projection (both papers' target modules) in LoRA."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.model.transformer["blocks"]:
        for name in LORA_TARGETS:
            setattr(block, name, LoRALinear(getattr(block, name), rank, float(rank), gen))


def merge_lora(model: LLaDA) -> None:
    for block in model.model.transformer["blocks"]:
        for name in LORA_TARGETS:
            layer = getattr(block, name)
            if isinstance(layer, LoRALinear):
                setattr(block, name, layer.merged())


# ---------------------------------------------------------------------------- training


def train(teacher: Loaded, cfg: DistillConfig, out: Path, log=print, samples: list[TeacherSample] | None = None) -> dict:
    """Distil `teacher` into a student (a copy of it) and write an HF-format folder to `out`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    if samples is None:
        samples = teacher_samples(teacher, cfg, log)
    kept = [s for s in samples if s.correct]
    if not kept:
        raise ValueError("the teacher solved none of the distillation prompts; nothing to distil")
    t_train = time.time()
    teacher_seconds = t_train - t0
    log(f"teacher: kept {len(kept)} of {len(samples)} correct responses ({teacher_seconds:.0f} s)")
    student = LLaDA(teacher.model.cfg, eot_id=teacher.model.eot_id)
    student.load_state_dict(teacher.model.state_dict())
    if cfg.lora_rank:
        add_lora(student, cfg.lora_rank, cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(kept) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    L = cfg.gen_length
    running: dict[str, float] = {}
    step = 0
    for _ in range(cfg.epochs):
        order = list(range(len(kept)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            batch = [kept[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            progress = step / max(total, 1)
            ids, masks = _batch(batch, rng, gen, cfg, progress, L)
            student.train()
            loss, parts = distill_loss(student, ids, *masks, teacher.model.mask_id, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            for k, v in {"loss": loss.item(), **parts}.items():
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            if step % 50 == 0 or step == total:
                log(f"step {step}/{total} " + " ".join(f"{k} {v:.4f}" for k, v in running.items()) + f" ({eta(t_train, step, total)})")
    if cfg.lora_rank:
        merge_lora(student)
    student.eval()
    meta = {
        "recipe": f"dleval train distill --method {cfg.method}",
        "teacher": teacher.name,
        "config": asdict(cfg),
        "teacher_samples": len(samples),
        "kept": len(kept),
        "teacher_seconds": round(teacher_seconds, 1),
        "train_seconds": round(time.time() - t_train, 1),
        "steps": total,
        "torch": torch.__version__,
    }
    save_folder(out, student, teacher.tokenizer._tokenizer, meta)
    shutil.copy(teacher.folder / "tokenizer_config.json", out / "tokenizer_config.json")
    meta["total_seconds"] = round(time.time() - t0, 1)
    return meta


def _batch(batch: list[TeacherSample], rng: random.Random, gen: torch.Generator, cfg: DistillConfig, progress: float, L: int):
    """Token ids (B, P + L) and the (masked, complement, after) masks over the same shape."""
    P = len(batch[0].prompt)
    if any(len(s.prompt) != P for s in batch):
        raise AssertionError("distillation prompts must share one length (synth_gsm prompts do)")
    ids = torch.tensor([list(s.prompt) + list(s.canvas) for s in batch])
    masks = torch.zeros(3, len(batch), P + L, dtype=torch.bool)
    if cfg.method == "d3llm":
        low = cfg.min_mask_ratio + progress * (cfg.max_mask_ratio - cfg.min_mask_ratio)
        ratio = rng.uniform(low, cfg.max_mask_ratio)  # one draw per step, as the reference
        block = block_size_at(progress, cfg.block_sizes)
    for row, sample in enumerate(batch):
        if cfg.method == "dparallel":
            parts = dparallel_masks(rng, gen, L, cfg)
        else:
            parts = d3llm_masks(rng, sample, ratio, block, L)
        for k in range(3):
            masks[k, row, P:] = parts[k]
    return ids, (masks[0], masks[1], masks[2])
