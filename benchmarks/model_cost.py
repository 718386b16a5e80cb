"""CPU sampling cost of each model preset: ms per U-Net forward at batch 16.

The cost side of the architecture study (README, "The default model"): with a free
Space's 2 cores, DDPM's 500 steps for 16 sprites must fit in a few seconds.

    python benchmarks/model_cost.py [--threads 2] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import best_time, forward_flops, machine_name  # noqa: E402
from model import PRESETS, build_unet  # noqa: E402


def forward(unet, x, t, context) -> None:
    with torch.inference_mode():
        unet(x, t, class_labels=context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--presets", nargs="+", default=[p for p in PRESETS if p != "tiny"])
    parser.add_argument("--calls", type=int, default=20, help="forwards per timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_name(torch.device('cpu'))}; batch {args.batch}, eager fp32, best of 3 x "
          f"{args.calls} calls\n")
    print("| preset | channels | parameters | MFLOP/image | ms per step | DDPM 500 steps, s |")
    print("| --- | --- | --- | --- | --- | --- |")
    x, t = torch.randn(args.batch, 3, 16, 16), torch.tensor(250)
    for name in args.presets:
        unet = build_unet(5, name).eval()
        context = torch.eye(5)[torch.arange(args.batch) % 5]
        seconds = best_time(lambda u=unet, c=context: [forward(u, x, t, c) for _ in range(args.calls)])
        ms = seconds / args.calls * 1000
        params = sum(p.numel() for p in unet.parameters()) / 1e6
        flops = forward_flops(unet, 1, 16, 5) / 1e6
        channels = "-".join(map(str, unet.config.block_out_channels))
        print(f"| {name} | {channels} | {params:.2f}M | {flops:.0f} | {ms:.1f} | {ms * 500 / 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()
