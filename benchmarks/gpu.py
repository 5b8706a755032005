"""GPU benchmark: forward times of LLaDA-8B (and Dream-7B) with random bf16 weights against the hardware floor, and decoder overhead per step.

Run on a CUDA machine (one H100: well under 5 minutes):
    python benchmarks/gpu.py
On a CPU, with a small config of the same architectures (what the test runs):
    python benchmarks/gpu.py --small --device cpu

No checkpoint is downloaded: the architectures are built from their config dataclasses (LLaDA-8B:
`dleval.models.llada.LLaDAConfig()`; Dream-7B: `dleval.models.dream.DreamConfig()` when that file
exists) with random weights (normal, std 0.02; norms 1), bf16 on CUDA, fp32 on CPU. Speed does not
depend on the weights' values.

Part 1, forwards. Batch 1 (and `--batch`), prompt of `--prompt` tokens, canvas of prompt + `--gen`:
- no cache: the full canvas, every decoder's forward without a cache (LLaDA, dParallel, d3LLM);
- prefix: the first block's forward under Fast-dLLM's prefix cache (x[P:] against the prompt's K/V);
- dual: one block (`--block` tokens) against the whole canvas's K/V (Fast-dLLM's dual cache: the
  fixed-shape forward a CUDA graph would capture).
Each is timed with `--warmup` untimed calls, then `--iters` calls between CUDA events (median).
The floor of a forward is max(weight bytes / HBM bandwidth, 2 * params * tokens / peak bf16
FLOP/s) for the device found (`KNOWN` below; `--hbm-gbs`/`--tflops` override): params excludes
the input embedding (a lookup reads only the rows it needs) and attention's own FLOPs are left
out, so the floor is a lower bound.

Part 2, decoders. Every decoder in dleval/decoders runs `--prompts` random prompts at
gen_length `--decode-gen`, block 32, T = 0, on the same random model. A random model is not
confident, so threshold decoders commit about one token per forward: the point is the time per
step outside the model. A wrapper synchronizes the device around each forward and sums the
forward time; overhead per step = (decode wall - forward time) / forwards.
Prints two tables and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/gpu.py` from a checkout

from _timing import TimedModel  # noqa: E402

from dleval import decoders  # noqa: E402
from dleval.models.base import Counted, KVCache  # noqa: E402

# name substring -> (HBM GB/s, dense bf16 TFLOP/s), from the vendors' data sheets (SXM parts unless named)
KNOWN = {
    "H200": (4800, 989),
    "H100 PCIe": (2000, 756),
    "H100 NVL": (3900, 835),
    "H100": (3350, 989),
    "GH200": (4000, 989),
    "B200": (8000, 2250),
    "A100-SXM4-80GB": (2039, 312),
    "A100 80GB PCIe": (1935, 312),
    "A100": (1555, 312),
    "L40S": (864, 362),
    "A10G": (600, 70),
    "RTX 4090": (1008, 165),
}


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # what the table calls it
    module: str  # dleval.models.<module>
    config: str  # its config dataclass
    cls: str  # its model class
    small: dict  # the --small overrides


FAMILIES = (
    Family(
        "LLaDA-8B", "llada", "LLaDAConfig", "LLaDA",
        dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=512, embedding_size=512,
             max_sequence_length=2048, mask_token_id=1, eos_token_id=0, pad_token_id=0),
    ),
    Family(
        "Dream-7B", "dream", "DreamConfig", "Dream",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=512, max_position_embeddings=2048, mask_token_id=1, bos_token_id=0, eos_token_id=0, pad_token_id=0),
    ),
)  # fmt: skip


def build(family: Family, small: bool, device: torch.device, dtype: torch.dtype):
    """The architecture with random weights, allocated directly on `device` in `dtype`; None if the family's file is absent."""
    try:
        module = importlib.import_module(f"dleval.models.{family.module}")
    except ModuleNotFoundError:
        return None
    cfg = getattr(module, family.config)()
    if small:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in family.small.items() if k in {f.name for f in dataclasses.fields(cfg)}})
    with torch.device("meta"):
        model = getattr(module, family.cls)(cfg)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    for buf_name, _ in model.named_buffers():  # rotary tables and the like are not parameters
        raise RuntimeError(f"{family.name} has a buffer {buf_name}: initialise it in build()")
    return model.eval()


def counts(model) -> tuple[int, int]:
    """(parameters that a forward multiplies by, their bytes): every weight but the input embedding."""
    n = b = 0
    for name, p in model.named_parameters():
        if "wte" in name or "embed_tokens" in name:
            continue
        n += p.numel()
        b += p.numel() * p.element_size()
    return n, b


def device_peak(device: torch.device, hbm_gbs: float | None, tflops: float | None) -> tuple[str, float | None, float | None]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    if hbm_gbs is None or tflops is None:
        for key, (bw, fl) in KNOWN.items():
            if device.type == "cuda" and key.lower() in name.lower():
                hbm_gbs, tflops = hbm_gbs or bw, tflops or fl
                break
    return name, hbm_gbs, tflops


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn, warmup: int, iters: int) -> float:
        """Median milliseconds of fn() over iters calls after warmup calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)


def time_forwards(model, args, device: torch.device, timer: Timer, peak: tuple[float | None, float | None]) -> list[dict]:
    params, weight_bytes = counts(model)
    hbm, tflops = peak
    P, L, Bk = args.prompt, args.gen, args.block
    rows = []
    for batch in args.batch:
        x = torch.randint(2, 500, (batch, P + L), device=device)
        x[:, P:] = model.mask_id
        with torch.inference_mode():
            full = model.forward(x)
            prefix = full.kv.keep(P)
            dual = KVCache([k.clone() for k in full.kv.keys], [v.clone() for v in full.kv.values])
            cases = {
                "no cache": (lambda x=x: model.forward(x), P + L),
                "prefix": (lambda x=x, c=prefix: model.forward(x[:, P:], start=P, cache=c), L),
                "dual": (lambda x=x, c=dual: model.forward(x[:, P : P + Bk], start=P, cache=c), Bk),
            }
            del full
            for kind, (fn, tokens) in cases.items():
                ms = timer(fn, args.warmup, args.iters)
                mem = 1000 * weight_bytes / (hbm * 1e9) if hbm else None
                flop = 1000 * 2 * params * tokens * batch / (tflops * 1e12) if tflops else None
                floor = max(v for v in (mem, flop) if v is not None) if (mem or flop) else None
                rows.append(
                    dict(kind=kind, batch=batch, tokens=tokens * batch, ms=ms, floor_ms=floor, memory_floor_ms=mem, compute_floor_ms=flop)
                )
    return rows


def decoder_overheads(model, args, device: torch.device) -> list[dict]:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, 500, (args.prompt,), generator=gen).tolist() for _ in range(args.prompts)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        block = 32 if args.decode_gen % 32 == 0 else args.decode_gen
        filt = Path(tmp) / f"learn2pd_filter_b{block}.safetensors"  # learn2pd needs a filter: a random one
        g = torch.Generator().manual_seed(0)
        save_file({"hidden.weight": torch.randn(16, block, generator=g), "hidden.bias": torch.zeros(16),
                   "out.weight": torch.randn(block, 16, generator=g), "out.bias": torch.zeros(block)}, str(filt))  # fmt: skip
        for name in decoders.names():
            module = decoders.load(name)
            fields = {f.name for f in dataclasses.fields(module.Config)}
            values = {"gen_length": args.decode_gen, "block_length": block, "filter": str(filt), "answer_prefix": ""}
            cfg = module.Config(**{k: v for k, v in values.items() if k in fields})
            if hasattr(module, "check"):
                try:
                    module.check(model, cfg)
                except ValueError as exc:  # a decoder that cannot run on this architecture (a model capability it needs)
                    rows.append(dict(decoder=name, skipped=str(exc)))
                    continue
            timed = TimedModel(model)
            counted = Counted(timed)
            module.decode(counted, prompts[:1], cfg)  # warm-up
            timed.seconds = 0.0
            counted.reset()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for p in prompts:
                module.decode(counted, [p], cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - t0
            over = (wall - timed.seconds) / max(counted.nfe, 1)
            rows.append(
                dict(decoder=name, forwards=counted.nfe, wall_s=wall, forward_ms=1000 * timed.seconds / max(counted.nfe, 1),
                     overhead_ms=1000 * over, overhead_share=over / max(timed.seconds / max(counted.nfe, 1), 1e-12))
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="a small config of each architecture (CPU test)")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    parser.add_argument("--gen", type=int, default=256, help="generation length of the timed forwards")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8], help="batch sizes, comma-separated")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=2, help="random prompts per decoder")
    parser.add_argument("--decode-gen", type=int, default=64, help="gen_length of the decoder runs")
    parser.add_argument("--families", default="LLaDA-8B,Dream-7B")
    parser.add_argument("--hbm-gbs", type=float, default=None, help="override the HBM bandwidth (GB/s)")
    parser.add_argument("--tflops", type=float, default=None, help="override the peak dense bf16 TFLOP/s")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --device cpu --small")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name, hbm, tflops = device_peak(device, args.hbm_gbs, args.tflops)
    timer = Timer(device)
    print(f"device: {name} | {dtype} | torch {torch.__version__} | floor from "
          f"{f'{hbm:.0f} GB/s, {tflops:.0f} TFLOP/s' if hbm and tflops else 'nothing (unknown device: pass --hbm-gbs and --tflops)'}")  # fmt: skip
    result: dict = {"device": name, "dtype": str(dtype), "small": args.small, "hbm_gbs": hbm, "tflops": tflops, "families": {}}
    wanted = {s.strip() for s in args.families.split(",")}
    t_start = time.perf_counter()
    for family in FAMILIES:
        if family.name not in wanted:
            continue
        model = build(family, args.small, device, dtype)
        if model is None:
            print(f"\n{family.name}: dleval/models/{family.module}.py does not exist in this checkout; skipped")
            continue
        params, weight_bytes = counts(model)
        print(
            f"\n{family.name}{' (small config)' if args.small else ''}: {params / 1e9:.2f} B params in the forward, {weight_bytes / 2**30:.1f} GiB"
        )
        fw = time_forwards(model, args, device, timer, (hbm, tflops))
        print(f"{'forward':<10}{'batch':>6}{'tokens':>8}{'ms':>10}{'floor ms':>10}{'x floor':>9}   (memory / compute floor ms)")
        for r in fw:
            floor = f"{r['floor_ms']:10.2f}{r['ms'] / r['floor_ms']:9.2f}" if r["floor_ms"] else f"{'-':>10}{'-':>9}"
            parts = " / ".join(f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("memory_floor_ms", "compute_floor_ms"))
            print(f"{r['kind']:<10}{r['batch']:>6}{r['tokens']:>8}{r['ms']:10.2f}{floor}   ({parts})")
        dec = decoder_overheads(model, args, device)
        print(f"{'decoder':<17}{'forwards':>9}{'forward ms':>12}{'overhead ms/step':>18}{'share':>8}")
        for r in dec:
            if "skipped" in r:
                print(f"{r['decoder']:<11}  skipped: {r['skipped']}")
                continue
            print(f"{r['decoder']:<17}{r['forwards']:>9}{r['forward_ms']:12.2f}{r['overhead_ms']:18.3f}{100 * r['overhead_share']:7.1f}%")
        result["families"][family.name] = {"params": params, "weight_bytes": weight_bytes, "forwards": fw, "decoders": dec}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - t_start
    print(f"\ntotal {result['seconds']:.0f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
