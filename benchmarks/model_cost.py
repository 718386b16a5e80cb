"""CPU sampling cost of each model preset: ms per U-Net forward at batch 16.

The cost side of the architecture study (docs/study-history.md): with a free
Space's 2 cores, DDPM's 500 steps for 16 sprites must fit in a few seconds.

    python benchmarks/model_cost.py [--threads 2] [--batch 16] [--json runs/study/cost.json]

With classifier-free guidance (the app's default) every step runs the U-Net on twice the
batch (conditional and unconditional rows together), so both costs are measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import best_time, forward_flops, machine_name  # noqa: E402
from model import PRESETS, build_unet  # noqa: E402


def forward(unet, x, t, context) -> None:
    with torch.inference_mode():
        unet(x, t, class_labels=context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--calls", type=int, default=20, help="forwards per timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (for the study table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_name(torch.device('cpu'))}; batch {args.batch}, eager fp32, best of 3 x "
          f"{args.calls} calls\n")
    print("| preset | channels | attention | parameters | MFLOP/image | ms per step | ms per step, guided "
          "| DDPM 500 steps, s | DDPM 500 steps guided, s |")
    print("|" + " --- |" * 9)
    results, t = [], torch.tensor(250)
    for name in args.presets:
        unet = build_unet(5, name).eval()
        row = {"preset": name, "channels": "-".join(map(str, unet.config.block_out_channels)),
               "attention": bool(unet.config.add_attention), "batch": args.batch, "threads": args.threads,
               "parameters": sum(p.numel() for p in unet.parameters()),
               "mflop_per_image": forward_flops(unet, 1, 16, 5) / 1e6}
        for key, batch in (("ms_per_step", args.batch), ("ms_per_step_guided", 2 * args.batch)):
            x = torch.randn(batch, 3, 16, 16)
            context = torch.eye(5)[torch.arange(batch) % 5]
            seconds = best_time(lambda u=unet, x=x, c=context: [forward(u, x, t, c) for _ in range(args.calls)])
            row[key] = seconds / args.calls * 1000
        results.append(row)
        print(f"| {name} | {row['channels']} | {'yes' if row['attention'] else 'no'} | "
              f"{row['parameters'] / 1e6:.2f}M | {row['mflop_per_image']:.0f} | {row['ms_per_step']:.1f} | "
              f"{row['ms_per_step_guided']:.1f} | {row['ms_per_step'] / 2:.1f} | {row['ms_per_step_guided'] / 2:.1f} |",
              flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_name(torch.device("cpu")), "presets": results},
                                        indent=2) + "\n")

if __name__ == "__main__":
    main()
