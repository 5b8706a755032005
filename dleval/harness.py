"""dleval as an lm-evaluation-harness model, for users who keep their lm-eval workflow.

    pip install -e '.[lm-eval]'
    python -m dleval.harness --model dleval \\
        --model_args decoder=dparallel,model=GSAI-ML/LLaDA-8B-Instruct,threshold=0.5,speed_log=speed.jsonl \\
        --tasks gsm8k --apply_chat_template

`python -m dleval.harness` is lm-eval's own command line with the `dleval` model registered: the
pattern of the dLLM repos' `eval_llada.py` scripts, without copying them. `--model_args` takes
`decoder`, `model` (registry name, folder or hub id), `speed_log` and any of the decoder's
`Config` fields (the repos' names `gen_length`, `steps`, `block_length`, `threshold` and the
aliases of `dleval.options`). Each request is decoded alone, as in those scripts; the text after
the prompt is cut at the request's `until` strings and stripped of special tokens. lm-eval's
results have no place for speed, so NFE, answer tokens and synced seconds of every request go to
the sidecar JSONL `speed_log`, keyed by a hash of the prompt. `max_gen_toks` is ignored: a dLLM's
canvas is the decoder's `gen_length`. Generation tasks only: log-likelihood requests raise.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from dleval import decoders, models, options
from dleval.run import completion_of


class Generator:
    """Decode one lm-eval context with a dleval decoder; the lm-eval-independent core."""

    def __init__(
        self, decoder: str = "llada", model: str | None = None, speed_log: str | None = None, device: str | None = None, **decoder_args: Any
    ):
        info = decoders.info(decoder)
        self.decoder = decoders.load(info.name)
        self.cfg = options.build(self.decoder.Config, decoder_args, f"decoder '{info.name}'")
        self.loaded = models.load(model or (info.paper_model if torch.cuda.is_available() else info.cpu_model), device=device)
        self.counted = models.Counted(self.loaded.model)
        self.speed_log = Path(speed_log) if speed_log else None
        self.eos_ids = {self.loaded.model.eos_id} | ({self.loaded.model.eot_id} if self.loaded.model.eot_id is not None else set())

    def generate(self, context: str, until: list[str] | None = None) -> str:
        tokenizer = self.loaded.tokenizer
        ids = tokenizer(context)["input_ids"]
        device = self.loaded.model.device
        self.counted.reset()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (gen,) = self.decoder.decode(self.counted, [ids], self.cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        _, text, answer_tokens = completion_of(gen.tokens, tokenizer, tuple(until or ()), self.eos_ids)
        if self.speed_log is not None:
            row = {
                "prompt_hash": hashlib.sha256(context.encode()).hexdigest(),
                "nfe": self.counted.nfe,
                "answer_tokens": answer_tokens,
                "gen_tokens": sum(gen.committed_per_step),
                "seconds": seconds,
                "finish": gen.finish,
            }
            with self.speed_log.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return text

    def chat(self, history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.loaded.tokenizer.apply_chat_template(history, add_generation_prompt=add_generation_prompt, tokenize=False)


def register() -> type:
    """Define and register the lm-eval model class `dleval` (needs lm-eval installed)."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    @register_model("dleval")
    class DlevalLM(LM):
        def __init__(self, batch_size: Any = None, max_batch_size: Any = None, **kwargs: Any) -> None:
            super().__init__()
            self.generator = Generator(**kwargs)

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for request in requests:
                context, gen_kwargs = request.args
                until = gen_kwargs.get("until", [])
                out.append(self.generator.generate(context, [until] if isinstance(until, str) else list(until)))
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

        @property
        def tokenizer_name(self) -> str:
            return str(self.generator.loaded.folder).replace("/", "__")

    return DlevalLM


def main() -> None:
    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
