"""Does GRF's cost grow linearly in the number of modalities, and MulT's faster?

For n = 2..16 modalities (each T steps of `size` features, batch B, d_model d, L layers) this times
forward and forward+backward of GRF and of the MulT baseline, interleaved in one run on the CPU,
and reports parameters, analytic FLOPs, a linear fit of GRF's time in n (with R^2), the log-log
growth exponent of each model, and the MulT/GRF time ratio per n.

    python bench/scaling.py                               # the table of BENCHMARKS.md
    python bench/scaling.py --write BENCHMARKS.md         # ... and replace its section there
    python bench/scaling.py --ns 2 3 4 --repeats 1        # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from report import command_line, cpu_name, write_section
from grf_stream.baselines.mult import MulT, MulTConfig
from grf_stream.flops import grf_flops, mult_flops
from grf_stream.model import GRF, GRFConfig



def build(kind: str, n: int, args) -> tuple[torch.nn.Module, int]:
    """A model over n modalities and its analytic forward FLOPs for one batch."""
    sizes = {f"m{i}": args.size for i in range(n)}
    lengths = {m: args.length for m in sizes}
    if kind == "GRF":
        config = GRFConfig(modalities=sizes, d_model=args.d_model, num_layers=args.layers,
                           num_heads=args.heads, d_ffn=4 * args.d_model)
        return GRF(config), grf_flops(config, lengths) * args.batch
    config = MulTConfig(modalities=sizes, d_model=args.d_model, num_layers=args.layers, num_heads=args.heads)
    return MulT(config), mult_flops(config, lengths) * args.batch


def time_call(fn, min_seconds: float, device: torch.device) -> float:
    """Seconds per call: repeat `fn` until `min_seconds` have passed (at least once)."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        synchronize()  # GPU work is asynchronous: count it, not just its launch
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure(model: torch.nn.Module, inputs: dict, min_seconds: float, device: torch.device) -> tuple[float, float]:
    """(forward seconds, forward+backward seconds) for one batch, in training mode as a trainer runs it."""
    model.train()

    def forward():
        with torch.no_grad():
            model(inputs)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(inputs).prediction.sum().backward()

    forward_backward()  # warm-up: allocations, autograd graph caches
    return time_call(forward, min_seconds, device), time_call(forward_backward, min_seconds, device)


def run(args) -> dict:
    device = torch.device(args.device)
    inputs = {n: {f"m{i}": torch.randn(args.batch, args.length, args.size, device=device) for i in range(n)}
              for n in args.ns}
    times, sizes = {}, {}
    for round_ in range(args.repeats):  # interleaved: every model once per round, so drift hits all alike
        for n in args.ns:
            for kind in ("GRF", "MulT"):
                torch.manual_seed(n)
                # Built afresh each turn and dropped after: MulT at n=16 alone needs ~12 GB to train.
                model, flops = build(kind, n, args)
                sizes[kind, n] = (sum(p.numel() for p in model.parameters()), flops)
                fwd, fwd_bwd = measure(model.to(device), inputs[n], args.min_seconds, device)
                del model
                times.setdefault((kind, n), ([], []))
                times[kind, n][0].append(fwd)
                times[kind, n][1].append(fwd_bwd)
                print(f"round {round_ + 1}/{args.repeats} {kind:>4} n={n:>2}: fwd {fwd * 1e3:8.1f} ms, "
                      f"fwd+bwd {fwd_bwd * 1e3:8.1f} ms", flush=True)
    results = {}
    for key, (params, flops) in sizes.items():
        fwd, fwd_bwd = (statistics.median(t) for t in times[key])
        results[key] = {"params": params, "flops": flops, "fwd": fwd, "fwd_bwd": fwd_bwd}
    return results


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, R^2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    return a, b, 1.0 - residual.var() / y.var()


def growth_exponent(x, y) -> float:
    """k in y ~ x^k, fitted on log-log axes."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Python {platform.python_version()}"
    return (f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def report(results: dict, args) -> str:
    ns = args.ns
    lines = [
        f"Machine: {machine(args.device)}.",
        f"Setting: n modalities of T={args.length} steps x {args.size} features, batch {args.batch}, "
        f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads (MulT: n(n-1) crossmodal "
        f"transformers of {args.layers} layers + n self-attention transformers of width (n-1)d); "
        f"median of {args.repeats} interleaved rounds, each timing at least {args.min_seconds} s.",
        "",
        "| n | GRF params | MulT params | GRF GFLOP | MulT GFLOP | GRF fwd ms | MulT fwd ms | GRF fwd+bwd ms "
        "| MulT fwd+bwd ms | MulT/GRF fwd | MulT/GRF fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        g, m = results["GRF", n], results["MulT", n]
        lines.append(
            f"| {n} | {g['params']:,} | {m['params']:,} | {g['flops'] / 1e9:.2f} | {m['flops'] / 1e9:.1f} "
            f"| {g['fwd'] * 1e3:.1f} | {m['fwd'] * 1e3:.1f} | {g['fwd_bwd'] * 1e3:.1f} | {m['fwd_bwd'] * 1e3:.1f} "
            f"| {m['fwd'] / g['fwd']:.1f}x | {m['fwd_bwd'] / g['fwd_bwd']:.1f}x |"
        )
    lines.append("")
    for mode, label in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
        a, b, r2 = linear_fit(ns, [results["GRF", n][mode] * 1e3 for n in ns])
        k_grf = growth_exponent(ns, [results["GRF", n][mode] for n in ns])
        k_mult = growth_exponent(ns, [results["MulT", n][mode] for n in ns])
        lines.append(
            f"- GRF {label}: time = {a:.1f} ms + {b:.2f} ms x n, R^2 = {r2:.4f}; log-log growth exponent "
            f"GRF {k_grf:.2f}, MulT {k_mult:.2f}."
        )
    k_flops = growth_exponent(ns, [results["MulT", n]["flops"] for n in ns])
    lines.append(f"- Analytic FLOPs growth exponent: MulT {k_flops:.2f} (GRF exactly linear by construction).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16])
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared 2-core box)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--write", type=Path, help="replace the scaling section of this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    body = report(run(args), args)
    print("\n" + body)
    if args.write:
        heading = "Scaling in the number of modalities: GRF vs MulT"
        write_section(args.write, "scaling", heading, body, command_line("scaling.py"))


if __name__ == "__main__":
    main()
