"""What the benchmarks share: the machine's name and peak FLOP/s, FLOPs of a forward, timing."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.deepcache import split_forward

# Dense peak TFLOP/s by GPU name (vendor datasheets, SXM parts, without sparsity).
GPU_PEAK_TFLOPS = {"H100": {"fp32": 67.0, "bf16": 989.0}, "H200": {"fp32": 67.0, "bf16": 989.0},
                   "A100": {"fp32": 19.5, "bf16": 312.0}}


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def peak_flops(device: torch.device, dtype: str = "fp32") -> tuple[float, str]:
    """Peak FLOP/s and how it was computed.

    CPU: threads x clock x FLOPs per cycle per core, where an AVX-512 core retires two
    16-lane fp32 FMAs per cycle (64 FLOPs; 32 with AVX2 only), doubled for bf16 dot
    products (AVX512-BF16). The clock is the one /proc/cpuinfo reports.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks[dtype] * 1e12, f"{key} datasheet dense {dtype}"
        return float("nan"), "unknown GPU"
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                if line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        return float("nan"), "unknown CPU"
    per_cycle = 64 if "avx512f" in flags else 32
    if dtype == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
    threads = torch.get_num_threads()
    return threads * mhz * 1e6 * per_cycle, f"{threads} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle"


def forward_flops(unet: torch.nn.Module, batch: int, resolution: int, num_contexts: int,
                  outer_only: bool = False) -> float:
    """FLOPs of one U-Net forward (matmuls and convolutions, 2 per multiply-add); outer_only: DeepCache's pass
    of the outer blocks on a kept deep feature (model/deepcache.py)."""
    device = next(unet.parameters()).device
    x, t = torch.zeros(batch, 3, resolution, resolution, device=device), torch.tensor([1.0], device=device)
    context = torch.zeros(batch, num_contexts, device=device)
    with torch.no_grad():
        deep = split_forward(unet, x, t, context)[1] if outer_only else None
        with FlopCounterMode(display=False) as counter:
            split_forward(unet, x, t, context, deep) if outer_only else unet(x, t, class_labels=context)
    return float(counter.get_total_flops())


def best_time(fn: Callable[[], object], repeats: int = 3, device: torch.device | None = None,
              warmup: bool = True) -> float:
    """Best wall time of `repeats` runs, after one warm-up run if asked (the least disturbed by other load)."""
    def run() -> float:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    if warmup:
        run()
    return min(run() for _ in range(repeats))
