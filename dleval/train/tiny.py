"""`dleval train tiny`: build the tokenizer and train the bundled tiny masked-diffusion model.

LLaDA-style SFT (ML-GSAI/LLaDA GUIDELINES.md, "SFT"): the prompt is never masked; each
response, padded with EOS, is masked at a ratio p = (1-eps)t + eps with t ~ U(0, 1) per
example; the loss is the masked-token cross entropy weighted by 1/p and divided by the answer
length (EOS padding included, so the model learns to stop). The model is dleval's native LLaDA
architecture at a few million parameters, trained on `synth_gsm` problems from the "train"
stream, and written as an HF-format folder (config.json, model.safetensors, tokenizer.json with
a chat template) that `--model` loads like any LLaDA checkpoint.

`--arch dream` (TinyConfig.arch) trains the same recipe on dleval's native Dream architecture
(`tiny-dream`: Qwen2 block with q/k/v biases and grouped-query attention, Dream's config.json and
parameter names, Dream's chat template and special tokens). The objective is Dream's shifted
one: `Dream.forward` returns logits[:, i] = the network's output at i-1, so the same masked
cross entropy trains position i-1 to predict the masked token i (Dream-org/Dream, arXiv
2508.15487 §2; Dream keeps the 1/t weight of LLaDA's loss).

Deterministic: a fixed seed, data drawn by index from the problem stream, a fixed thread count.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dleval.models.dream import Dream, DreamConfig
from dleval.models.llada import LLaDA, LLaDAConfig
from dleval.tasks import synth_gsm

SPECIAL_TOKENS = ("<|endoftext|>", "<|mdm_mask|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# Dream's special tokens (Dream-v0-Instruct-7B tokenizer_config.json), at the same ids 0 and 1.
DREAM_SPECIAL_TOKENS = ("<|endoftext|>", "<|mask|>", "<|beginoftext|>", "<|im_start|>", "<|im_end|>")
EOS_ID, MASK_ID = 0, 1
# Words, signed digits and "=digit" are single pieces; digits are never merged with each other.
PRETOKEN_PATTERN = r" ?[A-Za-z]+| ?[+\-=]?\d| ?#+| ?[^\sA-Za-z\d]|\s+"
# LLaDA-8B-Instruct's chat format (LLaMA-3 style headers), with the tiny model's special tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Dream-v0-Instruct-7B's chat template (Qwen2.5's, default system prompt), verbatim.
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    vocab_size: int = 384  # BPE budget; the saved config records the actual size
    # Longer training teaches the model to count turns from the prompt, and the trade-off goes:
    # with the default task, 1500 steps kept 99% at four tokens per forward (synth_gsm docstring).
    # None: the architecture's count, DEFAULT_STEPS (the Dream arm learns the chain faster).
    train_steps: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    # LLaDA uses eps = 1e-3; at batch 64 the 1/t weight of a t ~ 1e-3 example then dominates the
    # clipped gradient, so the mask rate is kept >= 0.05 (and t is stratified over the batch).
    mask_eps: float = 0.05
    # Response padded with EOS to one of these per batch. Longer canvases (32-64) delayed learning
    # past 1500 steps (39% at one token per forward), so the canvases stay close to the task's 40.
    gen_lengths: tuple[int, ...] = (32, 40, 48)
    problem_steps: int = synth_gsm.Config.steps
    problem_turns: tuple[str, ...] = synth_gsm.Config.turns
    arch: str = "llada"  # "llada" (tiny) or "dream" (tiny-dream): the native architecture trained
    seed: int = 0
    threads: int = 1  # the bundled checkpoint was trained with 1 thread; the same count reproduces it bit for bit
    eval_problems: int = 500  # held-out synth_gsm test problems measured after training

    def __post_init__(self) -> None:
        if self.arch not in ("llada", "dream"):
            raise ValueError(f"arch must be 'llada' or 'dream', not {self.arch!r}")
        if self.train_steps is None:
            object.__setattr__(self, "train_steps", DEFAULT_STEPS[self.arch])
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be a positive integer, not {self.train_steps}")


# Steps per architecture. tiny-dream with tiny's 1000 steps (same recipe otherwise) kept 90.8 % at
# four tokens per forward (99.6 % at one): no trade-off left to manage there. 800 steps give
# 99.0 / 76.4 / 34.2 / 21.8 % at 1 / 2 / 4 / 8 tokens per forward and 600 steps 96.0 / 56.4 /
# 20.2 / 10.2 % (500 held-out problems, this recipe, seed 0), so the Dream arm trains 800.
DEFAULT_STEPS = {"llada": 1000, "dream": 800}


def eta(started: float, done: int, total: int) -> str:
    """'12s elapsed, ETA 34s' for a recipe's progress lines (linear in the work done)."""
    elapsed = time.time() - started
    left = elapsed / done * (total - done) if done else float("nan")
    return f"{elapsed:.0f}s elapsed, ETA {left:.0f}s"


def task_gen_length() -> int:
    """synth_gsm's generation length: the canvas its [generation] hint gives every decoder."""
    from dleval.tasks import load_task

    return load_task("synth_gsm").generation.gen_length


def chat_prompt(question: str, arch: str = "llada") -> str:
    """The tiny model's chat template rendered for one user turn, as a string."""
    if arch == "dream":
        return (
            f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        )
    return (
        f"<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def build_tokenizer(cfg: TinyConfig):
    """Byte-level BPE trained on synth_gsm text: every string encodes, decoding is exact."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(cfg.seed)
    corpus = []
    for _ in range(4000):
        p = synth_gsm.make_problem(rng, cfg.problem_steps, cfg.problem_turns)
        if cfg.arch == "dream":
            corpus.append(f"system\nYou are a helpful assistant.\nuser\n{p.question}\nassistant\n{p.answer}")
        else:
            corpus.append(f"user\n\n{p.question}assistant\n\n{p.answer}")
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=list(DREAM_SPECIAL_TOKENS if cfg.arch == "dream" else SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def save_folder(out: Path, model: LLaDA | Dream, tokenizer, meta: dict) -> None:
    """Write an HF-format model folder that `dleval.models.load` and AutoTokenizer read."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(out / "tokenizer.json"))
    dream = isinstance(model, Dream)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|beginoftext|>" if dream else "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>" if dream else "<|mdm_mask|>",
        "padding_side": "left",
        "model_max_length": model.cfg.max_position_embeddings if dream else model.cfg.max_sequence_length,
        "chat_template": DREAM_CHAT_TEMPLATE if dream else CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_batch(tokenizer, start_index: int, cfg: TinyConfig, gen_length: int) -> tuple[torch.Tensor, int]:
    """Token ids (batch, P + gen_length) of consecutive training problems, and P.

    synth_gsm prompts of one step count all tokenize to the same length, so batches need no
    padding mask; the response is padded with EOS to gen_length.
    """
    rows, P = [], None
    for i in range(start_index, start_index + cfg.batch_size):
        p = synth_gsm.problem("train", i, synth_gsm.Config(steps=cfg.problem_steps, turns=cfg.problem_turns))
        prompt = tokenizer.encode(chat_prompt(p.question, cfg.arch)).ids
        answer = tokenizer.encode(p.answer).ids
        if P is None:
            P = len(prompt)
        if len(prompt) != P or len(answer) >= gen_length:
            raise AssertionError("synth_gsm prompts must share one length and answers fit gen_length")
        rows.append(prompt + answer + [EOS_ID] * (gen_length - len(answer)))
    return torch.tensor(rows), P or 0


def forward_process(ids: torch.Tensor, P: int, gen: torch.Generator, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA SFT noising: (noisy ids, masked positions, per-position mask rate), prompt never masked."""
    B, T = ids.shape
    # Stratified t (one draw per 1/B of [0, 1)): same objective, far less variance at small batch.
    t = (torch.arange(B) + torch.rand(B, generator=gen)) / B
    t = t[torch.randperm(B, generator=gen)]
    p_mask = ((1 - eps) * t + eps)[:, None].expand(B, T)
    masked = torch.rand(B, T, generator=gen) < p_mask
    masked[:, :P] = False
    return torch.where(masked, torch.full_like(ids, MASK_ID), ids), masked, p_mask


def diffusion_loss(model: LLaDA | Dream, ids: torch.Tensor, P: int, gen: torch.Generator, eps: float) -> torch.Tensor:
    """LLaDA SFT loss: masked-token CE weighted by 1/p, normalised by the answer length.

    For a Dream model logits[:, i] is the network's output at i-1 (the shift undone in
    `Dream.forward`), so this is Dream's shifted objective."""
    B, T = ids.shape
    noisy, masked, p_mask = forward_process(ids, P, gen, eps)
    logits = model.forward(noisy).logits
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none") / p_mask[masked]
    return ce.sum() / (B * (T - P))


def evaluate(model: LLaDA | Dream, tokenizer, cfg: TinyConfig, tokens_per_step=(1, 2, 4, 8)) -> dict[str, float]:
    """Accuracy (%) of the LLaDA baseline at k tokens per forward on held-out synth_gsm test problems."""
    from dleval.decoders import llada
    from dleval.models.base import Counted

    gen_length = task_gen_length()
    task = synth_gsm.Config(steps=cfg.problem_steps, turns=cfg.problem_turns)
    problems = [synth_gsm.problem("test", i, task) for i in range(cfg.eval_problems)]
    prompts = [tokenizer.encode(chat_prompt(p.question, cfg.arch)).ids for p in problems]
    out = {}
    for k in tokens_per_step:
        decoded = llada.decode(Counted(model), prompts, llada.Config(gen_length=gen_length, block_length=gen_length, steps=gen_length // k))
        right = sum(tokenizer.decode(g.tokens).strip().endswith(f"#### {p.value}") for g, p in zip(decoded, problems))
        out[f"{k}_tokens_per_step"] = round(100.0 * right / len(problems), 2)
    return out


def build_model(cfg: TinyConfig, tokenizer) -> LLaDA | Dream:
    """The untrained network of `cfg.arch` at the tiny size, with the tokenizer's special ids."""
    vocab = tokenizer.get_vocab_size()
    if cfg.arch == "dream":
        dcfg = DreamConfig(
            hidden_size=cfg.d_model,
            intermediate_size=cfg.mlp_hidden_size,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=max(1, cfg.n_heads // 2),  # grouped-query attention, as Dream-7B (28 q / 4 kv heads)
            vocab_size=vocab,
            max_position_embeddings=512,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            mask_token_id=MASK_ID,
            bos_token_id=tokenizer.token_to_id("<|beginoftext|>"),
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
        )
        return Dream(dcfg, eot_id=tokenizer.token_to_id("<|im_end|>"))
    mcfg = LLaDAConfig(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        mlp_hidden_size=cfg.mlp_hidden_size,
        vocab_size=vocab,
        embedding_size=vocab,
        max_sequence_length=512,
        rope_theta=10000.0,
        mask_token_id=MASK_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    return LLaDA(mcfg, eot_id=tokenizer.token_to_id("<|eot_id|>"))


def train(cfg: TinyConfig, out: Path, log=print, eval_every: int = 0, monitor=None) -> dict:
    """Train, evaluate on held-out problems, and write the model folder to `out`.

    `monitor(model, tokenizer) -> dict`, if given, runs every `eval_every` steps (learning curves).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer)
    model.init_weights(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    t0 = time.time()
    running = None
    for step in range(cfg.train_steps):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.train_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        gen_length = cfg.gen_lengths[step % len(cfg.gen_lengths)]
        ids, P = make_batch(tokenizer, step * cfg.batch_size, cfg, gen_length)
        model.train()
        loss = diffusion_loss(model, ids, P, gen, cfg.mask_eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{cfg.train_steps} loss {running:.4f} lr {lr:.2e} ({eta(t0, step + 1, cfg.train_steps)})")
        if eval_every and monitor is not None and (step + 1) % eval_every == 0:
            model.eval()
            result = monitor(model, tokenizer)
            history.append({"step": step + 1, "seconds": round(time.time() - t0, 1), **result})
            log(f"eval {history[-1]}")
    meta = {
        "recipe": "dleval train tiny" + (" --arch dream" if cfg.arch == "dream" else ""),
        "config": asdict(cfg),
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "torch": torch.__version__,
    }
    model.eval()
    save_folder(out, model, tokenizer, meta)  # before the evaluation: a failure there never loses the training
    if cfg.eval_problems:
        t1 = time.time()
        meta["accuracy"] = evaluate(model, tokenizer, cfg)
        meta["eval_seconds"] = round(time.time() - t1, 1)
        log(f"held-out accuracy ({cfg.eval_problems} synth_gsm test problems, gen {task_gen_length()}): {meta['accuracy']}")
        (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
