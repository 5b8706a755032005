"""dleval as an lm-evaluation-harness model, for users who keep their lm-eval workflow.

    pip install -e '.[lm-eval]'
    python -m dleval.harness --model dleval \\
        --model_args decoder=dparallel,model=GSAI-ML/LLaDA-8B-Instruct,threshold=0.5,speed_log=speed.jsonl \\
        --tasks gsm8k --apply_chat_template
    torchrun --nproc-per-node 8 -m dleval.harness --model dleval ...     # or: accelerate launch -m dleval.harness ...

`python -m dleval.harness` is lm-eval's own command line with the `dleval` model registered: the
pattern of the dLLM repos' `eval_llada.py` scripts, without copying them (`lm_eval --model dleval`
cannot work: lm-eval does not discover models from other packages). `--model_args` takes `decoder`,
`model` (registry name, folder or hub id), `speed_log`, `threads` and any of the decoder's `Config`
fields (the repos' names `gen_length`, `steps`, `block_length`, `threshold` and the aliases of
`dleval.options`). The text after the prompt is cut at the request's `until` strings and stripped
of special tokens. lm-eval's results have no place for speed, so NFE, answer tokens and synced
seconds of every request go to the sidecar JSONL `speed_log`, keyed by a hash of the prompt (one
file per rank under a launcher: `speed.rank-<r>-of-<w>.jsonl`). `max_gen_toks` is ignored: a
dLLM's canvas is the decoder's `gen_length`. Generation tasks only: log-likelihood requests raise.

Batches: lm-eval's `--batch_size N` decodes N requests per `decode()` call for the decoders that
batch (`dleval list`; the others decode one prompt at a time, as `dleval run` does), longest
prompt first as lm-eval's own models order them, results returned in request order. A batched
decoder gives each request its batch-1 tokens and NFE (`tests/test_batched.py`); `seconds` in the
speed log is the batch's synced wall time split evenly over its requests, with `batch_size`
beside it. `--batch_size auto` is taken as 1 (a dLLM's memory depends on the canvas, not
only the batch; pick N yourself). Noise at T > 0 is drawn per request from a seed made of
`seed` (a model arg, default 1234 as `dleval run`) and the prompt, so a request's sample does not
depend on its batch mates, the batch size, the rank count or the request order.

Chat templates: a task that pre-fills the assistant's turn (lm-eval's `gen_prefix`, e.g.
`mbpp_instruct` opens the answer with ```` ```python ````) hands a history whose last message is
the assistant's; it is rendered with `continue_final_message`, so the prompt ends in the prefix,
not in a closed turn.

Ranks (`dleval.ranks`): under `torchrun` / `accelerate launch` each process is one lm-eval rank (`rank`,
`world_size`); lm-eval deals requests out by rank and gathers the per-sample metrics on rank 0 at
the end through `all_gather` / `gather_object` / `barrier` (and `accelerator.gather` /
`wait_for_everyone` in lm-eval <= 0.4.9), which use the launcher's `torch.distributed` process
group (NCCL on CUDA, gloo on CPU). Each rank decodes on `cuda:LOCAL_RANK`, or the CPU.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from dleval import launch
from dleval.errors import UserError, did_you_mean
from dleval.identity import sample_seed
from dleval.ranks import Ranks, detect

OWN_ARGS = ("decoder", "model", "speed_log", "device", "threads", "seed")


def rank_file(path: Path, rank: Ranks) -> Path:
    """`speed.jsonl` alone; `speed.rank-1-of-2.jsonl` for rank 1 of 2."""
    if rank.world_size <= 1:
        return path
    return path.with_name(f"{path.stem}.rank-{rank.rank}-of-{rank.world_size}{path.suffix or '.jsonl'}")


def batch_size_of(value: Any, log=None) -> int:
    """lm-eval's `--batch_size` (an int, its text, or "auto[:N]") as a positive int; "auto" is 1."""
    if value is None:
        return 1
    text = str(value).strip()
    if text.startswith("auto"):
        if log is not None:
            log("--batch_size auto is taken as 1 (a dLLM's memory depends on its canvas); pass --batch_size N to batch")
        return 1
    try:
        size = int(text)
    except ValueError:
        raise UserError(f"--batch_size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise UserError(f"--batch_size must be a positive integer, got {size}")
    return size


class Generator:
    """Decode lm-eval contexts with a dleval decoder, a batch at a time; the lm-eval-independent core."""

    def __init__(
        self,
        decoder: str = "llada",
        model: str | None = None,
        speed_log: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        seed: int = 1234,
        rank: Ranks | None = None,
        log=None,
        **decoder_args: Any,
    ):
        import torch

        from dleval import decoders, models, options

        info = decoders.info(decoder)
        self.name = info.name
        self.decoder = decoders.load(info.name)
        names = options.field_names(self.decoder.Config)
        for key in decoder_args:
            if key not in names and key not in options.ALIASES:
                raise UserError(
                    f"--model_args has no key '{key}'{did_you_mean(key, [*OWN_ARGS, *names])}; it takes "
                    f"{', '.join(OWN_ARGS)} and the decoder '{info.name}' parameters {', '.join(names)}"
                )
        self.cfg = options.build(self.decoder.Config, decoder_args, f"decoder '{info.name}'")
        if threads is not None:
            if not isinstance(threads, int) or threads <= 0:
                raise UserError(f"--model_args threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        self.rank = rank or detect(run_id="lm-eval")
        self.device = launch.device_for(None if device is None else str(device), self.rank, log)
        self.loaded = models.load(model or (info.paper_model if self.device.type == "cuda" else info.cpu_model), device=self.device)
        self.counted = models.Counted(self.loaded.model)
        self.speed_log = rank_file(Path(speed_log), self.rank) if speed_log else None
        if self.speed_log is not None:  # fail before decoding, not after the first request
            self.speed_log.parent.mkdir(parents=True, exist_ok=True)
            self.speed_log.touch()
        self.eos_ids = {self.loaded.model.eos_id} | ({self.loaded.model.eot_id} if self.loaded.model.eot_id is not None else set())
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"--model_args seed must be an integer, got {seed!r}")
        self.seed = seed
        self.batched = info.batched
        self.takes_seeds = "seeds" in inspect.signature(self.decoder.decode).parameters

    def generate(self, context: str, until: list[str] | None = None) -> tuple[str, int]:
        """The cut completion of `context` and the NFE it took."""
        return self.generate_batch([context], [until or []])[0]

    def generate_batch(self, contexts: list[str], untils: list[list[str]]) -> list[tuple[str, int]]:
        """The cut completion of each context and the NFE it took, decoded in one `decode()` call
        (the decoder's own batching: per-row NFE from `Counted`, batch-1 tokens at T = 0)."""
        import torch

        from dleval.scorers import completion_of

        tokenizer = self.loaded.tokenizer
        ids = [tokenizer(c)["input_ids"] for c in contexts]
        hashes = [hashlib.sha256(c.encode()).hexdigest() for c in contexts]
        extra = {"seeds": [sample_seed(self.seed, h) for h in hashes]} if self.takes_seeds else {}
        device, n = self.loaded.model.device, len(contexts)
        self.counted.reset()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        gens = self.decoder.decode(self.counted, ids, self.cfg, **extra)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - t0) / n
        nfes = self.counted.row_nfe(n)  # per request: the forwards that computed its row
        out, rows = [], []
        for gen, until, h, nfe in zip(gens, untils, hashes, nfes):
            _, text, answer_tokens = completion_of(gen.tokens, tokenizer, tuple(until), self.eos_ids)
            out.append((text, nfe))
            rows.append(
                {
                    "prompt_hash": h,
                    "nfe": nfe,
                    "answer_tokens": answer_tokens,
                    "gen_tokens": sum(gen.committed_per_step),
                    "seconds": seconds,
                    "batch_size": n,
                    "finish": gen.finish,
                    "rank": self.rank.rank,
                    "device": str(device),
                }
            )
        if self.speed_log is not None:
            with self.speed_log.open("a") as f:
                f.write("".join(json.dumps(row) + "\n" for row in rows))
        return out

    def chat(self, history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render a chat; a history ending in the assistant's (pre-filled) message is continued, not closed."""
        continue_final = bool(history) and history[-1].get("role") == "assistant"
        return self.loaded.tokenizer.apply_chat_template(
            history,
            add_generation_prompt=add_generation_prompt and not continue_final,
            continue_final_message=continue_final,
            tokenize=False,
        )


class _Accelerator:
    """The two `accelerate.Accelerator` methods lm-eval <= 0.4.9 calls on `lm.accelerator`."""

    def __init__(self, lm) -> None:
        self._lm = lm

    def gather(self, tensor):
        return self._lm.all_gather(tensor)

    def wait_for_everyone(self) -> None:
        self._lm.barrier()


def _init_process_group(rank: Ranks, device) -> None:
    """Join the launcher's process group (lm-eval gathers its results through it)."""
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        return
    if not os.environ.get("MASTER_ADDR"):
        raise UserError(
            f"rank {rank.rank} of {rank.world_size} has no MASTER_ADDR: lm-eval gathers results through torch.distributed, "
            "so launch with torchrun or accelerate launch (under SLURM: srun torchrun ...)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Generation is long and uneven across ranks; lm-eval's first collective comes only at the end.
    dist.init_process_group(backend, timeout=timedelta(weeks=52), rank=rank.rank, world_size=rank.world_size)


def register() -> type:
    """Define and register the lm-eval model class `dleval` (needs lm-eval installed)."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    @register_model("dleval")
    class DlevalLM(LM):
        def __init__(self, batch_size: Any = None, max_batch_size: Any = None, **kwargs: Any) -> None:
            super().__init__()
            rank = detect(run_id="lm-eval")  # lm-eval needs no shared invocation id

            def log(message: str) -> None:
                print(f"dleval: {message}", file=sys.stderr)

            self.generator = Generator(rank=rank, log=log, **kwargs)
            self.batch_size = batch_size_of(batch_size, log)
            if self.batch_size > 1 and not self.generator.batched:
                log(f"decoder '{self.generator.name}' decodes one prompt at a time; running with batch size 1")
                self.batch_size = 1
            self._rank, self._world_size = rank.rank, rank.world_size
            self._device = self.generator.device
            if rank.world_size > 1:
                if self._device.type == "cuda":
                    import torch

                    torch.cuda.set_device(self._device)  # NCCL's object collectives use the current device
                _init_process_group(rank, self._device)
                self.accelerator = _Accelerator(self)

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            from tqdm import tqdm

            where = f" · rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
            bar = tqdm(
                total=len(requests),
                desc=f"dleval · {self.generator.name}{where}",
                unit="request",
                disable=disable_tqdm or self.rank != 0,
                dynamic_ncols=True,
            )
            contexts, untils = [], []
            for request in requests:
                context, gen_kwargs = request.args
                until = gen_kwargs.get("until", [])
                contexts.append(context)
                untils.append([until] if isinstance(until, str) else list(until))
            # Longest prompt first (lm-eval's own order): batches of alike lengths, and a batch too
            # big for the device fails at the start, not hours in.
            order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
            out: list[str] = [""] * len(contexts)
            nfe = 0
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                done = self.generator.generate_batch([contexts[i] for i in batch], [untils[i] for i in batch])
                for i, (text, n) in zip(batch, done):
                    out[i] = text
                    nfe += n
                bar.update(len(batch))
                bar.set_postfix(nfe=f"{nfe / min(start + len(batch), len(order)):.1f}")
            bar.close()
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError(
                "dleval evaluates generation tasks; log-likelihood tasks need a Monte-Carlo estimator it does not ship"
            )

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError(
                "dleval evaluates generation tasks; log-likelihood tasks need a Monte-Carlo estimator it does not ship"
            )

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return self.generator.chat(chat_history, add_generation_prompt)

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return self.generator.loaded.tokenizer.chat_template or ""

        @property
        def tokenizer_name(self) -> str:
            return str(self.generator.loaded.folder).replace("/", "__")

        # Collectives lm-eval's evaluator calls when world_size > 1 (lm-eval >= 0.4.10; see _Accelerator for older).
        def all_gather(self, tensor):
            if self.world_size <= 1:
                return tensor
            import torch
            import torch.distributed as dist

            tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor)
            return torch.cat(parts)

        def gather_object(self, obj, dst: int = 0):
            if self.world_size <= 1:
                return [obj]
            import torch.distributed as dist

            result = [None] * self.world_size if self.rank == dst else None
            dist.gather_object(obj, result, dst=dst)
            return result

        def barrier(self) -> None:
            if self.world_size > 1:
                import torch.distributed as dist

                dist.barrier()

    return DlevalLM


def main() -> int:
    try:
        launch.configure_threads()  # before torch loads: OMP_WAIT_POLICY is read then
        register()
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except UserError as exc:
        print(f"dleval.harness: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable speed_log or output folder
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dleval.harness: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "lm_eval":
            raise
        print("dleval.harness: error: lm-eval is not installed; pip install -e '.[lm-eval]'", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
