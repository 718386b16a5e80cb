"""Faster sampling steps: inference mode, torch.compile, optional bf16.

Sampling calls the same small network hundreds of times on tiny tensors, so on a CPU
much of an eager step is Python and dispatch overhead; torch.compile (inductor) fuses
it away. On CUDA, mode="reduce-overhead" also captures CUDA graphs. Everything here
falls back to the eager network when compilation is unavailable, and the tests check
each fast path against the eager fp32 reference.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection

import torch
from diffusers import UNet2DModel

logger = logging.getLogger(__name__)

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TRACING_COLLISION = "is not installed as a submodule"  # torch.fx's error for a module called mid-trace
TRACING_WAIT_S = 300.0  # longest wait for another thread's trace to end (the longest seen: seconds)


def eager_predictor(unet: UNet2DModel) -> NoisePredictor:
    """The reference: the stock U-Net in fp32, safe to call while another thread compiles.

    torch.compile traces with torch.fx, which replaces ``torch.nn.Module.__call__`` for the whole process
    while it traces (seconds at a time, a few times per compile). A module called from another thread in that
    window fails with "module is not installed as a submodule": the app's requests did, while the U-Net was
    being compiled in the background. The forward changes nothing, so it waits for the window to end and
    runs again; no other thread-safe way around a process-wide patch exists short of a second process.
    """
    def predict(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        deadline = None
        while True:
            try:
                return unet(sample, timestep, class_labels=context).sample
            except NameError as err:
                if TRACING_COLLISION not in str(err):
                    raise
                deadline = deadline or time.monotonic() + TRACING_WAIT_S
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    return predict


def fast_predictor(unet: UNet2DModel, compile: bool = True, bf16: bool = False,
                   batch_sizes: Collection[int] | None = None) -> NoisePredictor:
    """A noise predictor with the chosen speed-ups; output is fp32 like the reference.

    compile: torch.compile the U-Net (falls back to eager if it fails, e.g. no C compiler).
    bf16: run the U-Net under bf16 autocast (faster on CPUs with AVX512-BF16/AMX and on GPUs).
    batch_sizes: use the compiled U-Net only for these batch sizes, eager for the rest. Each
        new shape costs a compile (tens of seconds on 2 CPU cores), which no request should wait for.
    """
    device_type = unet.device.type
    forward = eager_predictor(unet)
    if compile and os.environ.get("SPRITE_DISABLE_COMPILE") != "1":
        forward = compiled_or_eager(forward, mode="reduce-overhead" if device_type == "cuda" else None,
                                     batch_sizes=batch_sizes)
    if not bf16:
        return forward

    def predict_bf16(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(sample, timestep, context).float()
    predict_bf16.wrapped = forward
    return predict_bf16


def compile_error_of(predictor: Callable) -> str | None:
    """Why the compiled path of a fast_predictor failed and it runs eager; None if it compiled or never tried."""
    while predictor is not None:
        if getattr(predictor, "compile_error", None):
            return predictor.compile_error
        predictor = getattr(predictor, "wrapped", None)
    return None


def compiled_step(step: Callable[..., tuple[torch.Tensor, ...]], device_type: str
                  ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A whole reverse step (U-Net, guidance, update) compiled; on CUDA, one CUDA graph per step.

    A CUDA graph writes its outputs to the same memory at every replay, so they are copied
    before the next step overwrites them: callers may keep each step's tensors.
    """
    if os.environ.get("SPRITE_DISABLE_COMPILE") == "1":
        return step
    compiled = compiled_or_eager(step, mode="reduce-overhead" if device_type == "cuda" else None)
    if device_type != "cuda":
        return compiled

    def step_and_keep(*args: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return tuple(x.clone() for x in compiled(*args))
    return step_and_keep


def compiled_or_eager(forward: Callable, mode: str | None, batch_sizes: Collection[int] | None = None) -> Callable:
    """torch.compile compiles on the first call; if that fails, keep using the eager function.

    batch_sizes: call the compiled function only when the first argument has one of these batch sizes.
    """
    compiled = torch.compile(forward, mode=mode, dynamic=False)
    state = {"use": compiled}

    def call(sample: torch.Tensor, *args: torch.Tensor | None):
        if batch_sizes is not None and sample.shape[0] not in batch_sizes:
            return forward(sample, *args)
        try:
            return state["use"](sample, *args)
        except Exception as err:  # compile support varies by platform (no C compiler, say); eager always works
            if state["use"] is forward:
                raise
            call.compile_error = compile_failure(err)
            logger.warning("torch.compile failed (%s); running eager", call.compile_error)
            state["use"] = forward
            return forward(sample, *args)
    call.compile_error = None  # why compiling failed, once it has: the caller then knows it runs eager
    return call


def compile_failure(err: Exception) -> str:
    """One line for why torch.compile failed: inductor's errors run to dozens of lines of advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'no message'}"
