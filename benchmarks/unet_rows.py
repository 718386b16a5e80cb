"""U-Net cost per row at several batch sizes, per engine: what merging requests (model/batching.py) can gain in
arithmetic, and which engine runs the U-Net fastest on this machine.

    python -m benchmarks.unet_rows                                  # eager fp32, the bundled model
    python -m benchmarks.unet_rows --engines eager compile openvino openvino-bf16 openvino-int8

compile is torch.compile for these row counts (as the app does), openvino the U-Net converted by OpenVINO
(model/engine.py; needs `pip install openvino`, and `nncf` for int8, calibrated on noised bundled sprites).
Set-up is converting or compiling, and the first call at each size. Mean of 10 calls after 3 warm-up calls,
each size on the same random inputs; "max diff" is the largest difference from the eager output. Run it with
nothing else on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_name
from model import load_pipeline
from model.engine import OPENVINO_ENGINES, openvino_engine
from model.fast import fast_predictor

ENGINES = ("eager", "compile", *OPENVINO_ENGINES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or Hub repo (default: the bundled model)")
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["eager"])
    parser.add_argument("--compile", action="store_true", help="the same as --engines compile")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (a free Space has 2 cores)")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = ["compile"] if args.compile else args.engines
    pipe = load_pipeline(args.model)
    size, contexts = pipe.unet.config.sample_size, pipe.unet.config.num_class_embeds
    inputs = {rows: (torch.randn(rows, 3, size, size, generator=torch.Generator().manual_seed(rows)),
                     torch.full((rows,), 300.0), torch.rand(rows, contexts, generator=torch.Generator().manual_seed(1)))
              for rows in args.rows}
    print(f"{machine_name(torch.device('cpu'))}; fp32 unless named\n")
    print("| engine | set-up s | " + " | ".join(f"{rows} rows: ms per call (per row)" for rows in args.rows)
          + " | max diff from eager |")
    print("| --- " * (len(args.rows) + 3) + "|")
    with torch.inference_mode():
        reference = {rows: pipe.noise_predictor(*x) for rows, x in inputs.items()}
    for engine in engines:
        start = time.perf_counter()
        if engine == "eager":
            predictor = pipe.noise_predictor
        elif engine == "compile":
            predictor = fast_predictor(pipe.unet, batch_sizes=args.rows)
        else:
            predictor, why = openvino_engine(pipe, engine)
            if predictor is None:
                print(f"| {engine} | {why} |")
                continue
        cells, diff, setup = [], 0.0, time.perf_counter() - start
        with torch.inference_mode():
            for rows, x in inputs.items():
                begin = time.perf_counter()
                out = predictor(*x)  # compiles here, for compile
                setup += time.perf_counter() - begin
                diff = max(diff, float((out - reference[rows]).abs().max()))
                for _ in range(2):
                    predictor(*x)
                begin = time.perf_counter()
                for _ in range(args.calls):
                    predictor(*x)
                seconds = (time.perf_counter() - begin) / args.calls
                cells.append(f"{seconds * 1000:.1f} ({seconds / rows * 1000:.2f})")
        print(f"| {engine} | {setup:.0f} | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
