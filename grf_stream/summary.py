"""Parameters and FLOPs of a GRF config, part by part.

    python -m grf_stream.summary --config configs/model/grf_released.yaml [key=value ...] [--length 50]
"""

from __future__ import annotations

import argparse

from grf_stream.config import load_config
from grf_stream.flops import grf_flops
from grf_stream.model import GRF, GRFConfig


def parameter_table(model: GRF) -> list[tuple[str, int]]:
    """(top-level part, parameter count) rows and a total."""
    rows = [(name, sum(p.numel() for p in part.parameters())) for name, part in model.named_children()]
    rows = [(name, count) for name, count in rows if count]
    return rows + [("total", sum(count for _, count in rows))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a YAML file of configs/model/ (default: built-in defaults)")
    parser.add_argument("--length", type=int, default=50, help="steps per modality for the FLOPs count")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. d_model=128")
    args = parser.parse_args(argv)
    config = load_config(GRFConfig, args.config, args.overrides)
    for name, count in parameter_table(GRF(config)):
        print(f"{name:<10} {count:>12,}")
    lengths = {m: args.length for m in config.modalities}
    print(f"forward FLOPs per sample at {args.length} steps per modality: {grf_flops(config, lengths):,}")


if __name__ == "__main__":
    main()
