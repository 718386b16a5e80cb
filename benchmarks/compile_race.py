"""Requests during a cold background compile: how often a U-Net call meets torch.fx's trace, and whether the
app's eager predictor (model/fast.py) ever fails because of it.

Each run starts a fresh process with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR), as a new Space or a
retrained model starts, calls ``compile_in_background`` and, until the compile ends, sends requests from two
threads: one calls the bare U-Net (what requests did before the fix), one calls the pipeline as the app does.
A run reports how many calls each made and how many failed.

    python -m benchmarks.compile_race --runs 4             # the figure in docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from model.fast import TRACING_COLLISION

NAMES = ["hero", "non-hero", "food", "spell", "item"]
# A one-level U-Net: the race does not depend on the network's size, and its cold compile is quick (the tests).
MINIMAL = {"block_out_channels": (8,), "down_block_types": ("DownBlock2D",), "up_block_types": ("UpBlock2D",),
           "layers_per_block": 1, "norm_num_groups": 4}


def one_run(num_images: int, timeout_s: float, switch_interval: float, preset: str = "tiny") -> dict:
    """In this process (its inductor cache must be empty): compile in the background, call meanwhile."""
    from model import SpritePipeline, build_unet, make_scheduler

    # fx's trace windows are short and Python threads take turns every 5 ms by default: switching far more
    # often lets the other threads run inside the windows, so a cold start shows what rarer timing hides.
    sys.setswitchinterval(switch_interval)

    torch.manual_seed(0)
    pipe = SpritePipeline(build_unet(len(NAMES), MINIMAL if preset == "minimal" else preset), make_scheduler(), NAMES)
    unet = pipe.unet.eval()
    counts = {"bare_calls": 0, "bare_collisions": 0, "bare_other_errors": 0, "app_requests": 0, "app_failures": 0}
    thread = pipe.compile_in_background(num_images)
    if thread is None:
        raise SystemExit("compile is disabled here (SPRITE_DISABLE_COMPILE=1 or not a CPU)")
    deadline = time.monotonic() + timeout_s

    def bare() -> None:  # the U-Net called directly, as requests did before the eager predictor waited
        args = (torch.randn(1, 3, 16, 16), torch.tensor(10), torch.eye(len(NAMES))[:1])
        while pipe.compiling and time.monotonic() < deadline:
            try:
                with torch.inference_mode():
                    unet(*args[:2], class_labels=args[2])
            except NameError as err:
                counts["bare_collisions" if TRACING_COLLISION in str(err) else "bare_other_errors"] += 1
            counts["bare_calls"] += 1

    side = threading.Thread(target=bare, daemon=True)
    start = time.monotonic()
    side.start()
    while pipe.compiling and time.monotonic() < deadline:  # the app's requests: a 1-sprite DDIM run each
        try:
            pipe("hero", num_images=1, num_inference_steps=4, sampler="ddim", seed=0)
        except Exception as err:  # noqa: BLE001 -- counted and reported: any failure is the finding
            counts["app_failures"] += 1
            print(f"request failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        counts["app_requests"] += 1
    side.join()
    thread.join(max(0.0, deadline - time.monotonic()))
    counts["compile_s"] = round(time.monotonic() - start, 1)
    counts["finished"] = not pipe.compiling
    return counts


def cold_runs(runs: int, num_images: int = 2, timeout_s: float = 600, switch_interval: float = 1e-5,
              preset: str = "tiny") -> list[dict]:
    """``runs`` fresh processes, each with its own empty inductor cache."""
    results = []
    for index in range(runs):
        with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
            env.pop("SPRITE_DISABLE_COMPILE", None)
            done = subprocess.run([sys.executable, "-m", "benchmarks.compile_race", "--one_run",
                                   "--num_images", str(num_images), "--timeout_s", str(timeout_s),
                                   "--switch_interval", str(switch_interval), "--preset", preset],
                                  env=env, capture_output=True, text=True, timeout=timeout_s + 120)
        if done.returncode != 0:
            raise RuntimeError(f"run {index + 1} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"run {index + 1}/{runs}: {result}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="cold starts, each in a fresh process")
    parser.add_argument("--num_images", type=int, default=2, help="the compiled request size")
    parser.add_argument("--timeout_s", type=float, default=600, help="longest wait for one compile")
    parser.add_argument("--switch_interval", type=float, default=1e-5,
                        help="seconds between Python thread switches (sys.setswitchinterval; 0.005 is Python's own)")
    parser.add_argument("--preset", default="tiny", help="a model/unet.py preset, or minimal (one level)")
    parser.add_argument("--one_run", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one_run:
        print(json.dumps(one_run(args.num_images, args.timeout_s, args.switch_interval, args.preset)), flush=True)
        return
    results = cold_runs(args.runs, args.num_images, args.timeout_s, args.switch_interval, args.preset)
    total = {key: sum(r[key] for r in results) for key in results[0] if key not in ("compile_s", "finished")}
    print(json.dumps({"runs": len(results), "machine": _machine(), **total,
                      "compile_s": [r["compile_s"] for r in results]}))


def _machine() -> str:
    from benchmarks.common import machine_name
    return machine_name(torch.device("cpu"))


if __name__ == "__main__":
    main()
