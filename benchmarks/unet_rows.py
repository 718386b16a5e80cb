"""U-Net cost per row at several batch sizes: what merging requests (model/batching.py) can gain in arithmetic.

    python -m benchmarks.unet_rows              # eager fp32, the bundled model
    python -m benchmarks.unet_rows --compile    # compiled for these sizes first, as the app does

Mean of 10 calls after 3 warm-up calls, each size on random inputs; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_name
from model import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or Hub repo (default: the bundled model)")
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--compile", action="store_true", help="torch.compile for these row counts first")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    if args.compile:
        start = time.perf_counter()
        pipe.enable_fast_sampling(batch_sizes=args.rows)
        print(f"compiled for {args.rows} rows in {time.perf_counter() - start:.0f} s")
    size, contexts = pipe.unet.config.sample_size, len(pipe.context_names)
    print(f"{machine_name(torch.device('cpu'))}; {'compiled' if args.compile else 'eager'} fp32")
    for rows in args.rows:
        x, t = torch.randn(rows, 3, size, size), torch.full((rows,), 300.0)
        context = torch.rand(rows, contexts)
        with torch.inference_mode():
            for _ in range(3):
                pipe.noise_predictor(x, t, context)
            start = time.perf_counter()
            for _ in range(args.calls):
                pipe.noise_predictor(x, t, context)
        seconds = (time.perf_counter() - start) / args.calls
        print(f"{rows} rows: {seconds * 1000:.1f} ms per call, {seconds / rows * 1000:.2f} ms per row")


if __name__ == "__main__":
    main()
