"""Sampling in chunks of steps, each chunk one CUDA graph replay: a 500-step run in a handful of launches.

Why: on a GPU this model's steps are bound by the host launching work, not by arithmetic (docs/performance.md:
10-16 ms of launches per eager step on an H100, 2.1 ms with the compiled whole step, one graph per step). A CUDA
graph of many steps launches them all at once, but nothing may then come from the host between its steps. So a
request's noise is all drawn up front, on the CPU from the seed and in exactly the order SpritePipeline draws it
(a seed gives the same sprites on every path and device), copied to the device once, and each step reads its
timestep, coefficients and noise from device tables at a step index that itself lives on the device. Each step
writes its sample and x0 estimate into a frame buffer, read after the chunk: the app still streams, a chunk
at a time, from the same iterator of DenoiseStep that SpritePipeline.denoise returns.

Without CUDA, or when a capture fails, the very same chunk function runs eagerly: the same sprites, and on the
CPU in fp32 bit for bit the same as SpritePipeline.denoise. Only the course's samplers (DDPM, DDIM) and plain
sampling run here: diffusers' schedulers keep Python state between steps, and edit plans run a hook per step.

Memory: the noise table holds (steps + 1) x sprites x 3 x H x W floats (25 MB for DDPM 500 with 16 sprites of
16x16), once pinned on the host and once on the device.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .pipeline import ContextSpec, DenoiseStep, SpriteOutput, SpritePipeline
from .samplers import SAMPLERS
from .schedule import timestep_grid, unet_timestep

logger = logging.getLogger(__name__)

SUPPORTED_SAMPLERS = tuple(name for name, s in SAMPLERS.items() if s.is_course_formula)  # ("ddpm", "ddim")
Step = Callable[..., tuple[torch.Tensor, torch.Tensor]]
RunKey = tuple[int, int, bool]  # sprites, steps, guided: what a captured graph's shapes depend on


# ---- the CUDA-only part: PyTorch's capture recipe (torch.cuda.graphs), kept apart to verify on a GPU ----------
def warm_up(body: Callable[[], None]) -> None:
    """Run ``body`` once on a side stream before capturing it, as the recipe asks: lazy set-up (cuBLAS handles,
    workspaces) then happens outside the capture. Here the warm-up is the chunk's real run, not a throwaway."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)


def capture(body: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Record ``body``'s kernels without running them; ``graph.replay()`` runs them on the same memory.
    thread_local: another thread's CUDA calls (the app serves requests in threads) do not break the capture."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph


# ---- the buffers a chunk reads and writes ------------------------------------------------------------------
@dataclass(eq=False)
class _Run:
    """One request shape's device tensors. A captured graph reads and writes these addresses at every replay,
    so a request reuses them by copying its values in, never by replacing a tensor."""

    sample: torch.Tensor  # (N, 3, H, W): x_t between chunks
    context: torch.Tensor  # (N, C) context weights
    guidance: torch.Tensor | None  # () classifier-free guidance scale; None: unguided
    timesteps: torch.Tensor  # (S,) int64 U-Net timestep of each step
    coefficients: torch.Tensor  # (S, 5) rows of NoiseSchedule.step_table
    noise: torch.Tensor  # (S + 1, N, 3, H, W): the starting noise, then step i's extra noise at row i + 1
    start: torch.Tensor  # (1,) int64: the running chunk's first step
    frames: torch.Tensor  # (chunk, N, 3, H, W): x_{t_prev} after each step of the chunk
    clean: torch.Tensor  # (chunk, N, 3, H, W): x0_hat at each step of the chunk
    graphs: dict[int, Any] = field(default_factory=dict)  # chunk length -> captured graph
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the request using a cached run

    @classmethod
    def allocate(cls, key: RunKey, chunk_steps: int, contexts: int, noise: torch.Tensor) -> _Run:
        num_images, steps, guided = key
        shape, device = noise.shape[1:], noise.device
        frames = (min(chunk_steps, steps), *shape)
        return cls(sample=torch.empty(shape, device=device), context=torch.empty(num_images, contexts, device=device),
                   guidance=torch.empty((), device=device) if guided else None,
                   timesteps=torch.empty(steps, dtype=torch.int64, device=device),
                   coefficients=torch.empty(steps, 5, device=device), noise=noise,
                   start=torch.zeros(1, dtype=torch.int64, device=device),
                   frames=torch.empty(frames, device=device), clean=torch.empty(frames, device=device))


class ChunkedSampler:
    """SpritePipeline.denoise for DDPM and DDIM, run ``chunk_steps`` steps at a time.

    cuda_graphs: capture each chunk length once as a CUDA graph and replay it (needs the pipeline on a CUDA
        device; build the sampler after ``pipe.to``). Where that cannot be, ``uses_cuda_graphs`` is False,
        ``fallback_reason`` says why (also logged, once), and chunks run eagerly with ``pipe.step_function``.
    max_cached_runs: request shapes (sprites, steps, guided) whose buffers and graphs are kept.
    """

    def __init__(self, pipe: SpritePipeline, chunk_steps: int = 50, cuda_graphs: bool = False,
                 max_cached_runs: int = 4):
        if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a whole number of steps, 1 or more, got {chunk_steps!r}")
        self.pipe, self.chunk_steps, self.max_cached_runs = pipe, chunk_steps, max_cached_runs
        self.uses_cuda_graphs, self.fallback_reason = cuda_graphs, None
        if cuda_graphs and not torch.cuda.is_available():
            self._fall_back("CUDA is not available")
        elif cuda_graphs and pipe.device.type != "cuda":
            self._fall_back(f"the pipeline is on {pipe.device}, not a CUDA device")
        self._runs: OrderedDict[RunKey, _Run] = OrderedDict()
        self._lock = threading.Lock()  # the cache of runs, and one capture at a time

    def _fall_back(self, reason: str) -> None:
        self.uses_cuda_graphs, self.fallback_reason = False, reason
        logger.warning("CUDA graphs off, sampling in eager chunks: %s", reason)

    def denoise(self, context: ContextSpec | None = None, num_images: int = 16, num_inference_steps: int = 500,
                sampler: str = "ddpm", add_noise: bool = True, noise_scale: float = 1.0,
                guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                seed: int | None = None) -> Iterator[DenoiseStep]:
        """Check the inputs now (the pipeline's checks and messages), then iterate over every step, as
        SpritePipeline.denoise does; the steps come a chunk at a time."""
        pipe = self.pipe
        pipe.check_inputs(num_images, num_inference_steps, sampler, guidance_scale, noise_scale)
        if sampler not in SUPPORTED_SAMPLERS:
            raise ValueError(f"chunked sampling runs the course's samplers only ({', '.join(SUPPORTED_SAMPLERS)}), "
                             f"not {sampler!r}; SpritePipeline runs it step by step")
        if pipe.batcher is not None:
            raise ValueError("chunked sampling runs a request's U-Net calls itself: not with batching")
        context_weights = pipe.context_vector(context, num_images)
        return self._steps(context_weights, num_inference_steps, sampler, add_noise, noise_scale, guidance_scale,
                           pipe._generator(generator, seed))

    def __call__(self, *args: Any, callback: Callable[..., None] | None = None, **kwargs: Any) -> SpriteOutput:
        """Sample sprites: arguments as in SpritePipeline.__call__."""
        return self.pipe._collect(self.denoise(*args, **kwargs), callback)

    # ---- the loop -------------------------------------------------------------------------------------------
    def draw_noise(self, grid: list[tuple[int, int]], num_images: int, sampler: str, add_noise: bool,
                   noise_scale: float, generator: torch.Generator | None) -> torch.Tensor:
        """(S + 1, N, 3, H, W) on the CPU: row 0 the starting noise, row i + 1 the noise step i re-adds (zeros
        where it adds none), drawn one sprite batch at a time in SpritePipeline's order, so that the same
        generator state gives the same numbers. Pinned when the pipeline is on CUDA: one copy, not waited for."""
        size = self.pipe.unet.config.sample_size
        noise = torch.zeros(len(grid) + 1, num_images, 3, size, size, pin_memory=self.pipe.device.type == "cuda")
        noise[0].normal_(generator=generator)
        for index, (_, t_prev) in enumerate(grid):
            if sampler == "ddpm" and add_noise and t_prev > 0:
                extra = noise[index + 1].normal_(generator=generator)
                if noise_scale != 1.0:
                    extra.mul_(noise_scale)
        return noise

    @torch.inference_mode()
    def _steps(self, context_weights: torch.Tensor, num_inference_steps: int, sampler: str, add_noise: bool,
               noise_scale: float, guidance_scale: float, generator: torch.Generator | None
               ) -> Iterator[DenoiseStep]:
        pipe, num_images = self.pipe, context_weights.shape[0]
        grid = timestep_grid(num_inference_steps, pipe.num_train_steps)
        noise = self.draw_noise(grid, num_images, sampler, add_noise, noise_scale, generator)
        run, graphed = self._claim((num_images, num_inference_steps, guidance_scale != 1.0), noise)
        try:
            run.context.copy_(context_weights)
            if run.guidance is not None:
                run.guidance.fill_(guidance_scale)
            run.timesteps.copy_(torch.tensor([unet_timestep(t) for t, _ in grid]))
            run.coefficients.copy_(pipe.noise_schedule.step_table(grid, sampler).to(torch.float32))
            run.sample.copy_(run.noise[0])
            for start in range(0, num_inference_steps, self.chunk_steps):
                length = min(self.chunk_steps, num_inference_steps - start)
                self._run_chunk(run, start, length, graphed)
                # Copied out: the next chunk (or request) overwrites the buffers; callers may keep every step.
                frames, clean = run.frames[:length].clone(), run.clean[:length].clone()
                for offset in range(length):
                    yield DenoiseStep(start + offset, grid[start + offset][0], frames[offset], clean[offset])
        finally:
            if graphed:
                run.lock.release()

    def _claim(self, key: RunKey, noise: torch.Tensor) -> tuple[_Run, bool]:
        """This request's buffers, and whether graphs may be captured against them. With graphs, the cached
        ones for its shape (the graphs' addresses are theirs); otherwise, or while another request uses them,
        fresh ones, run eagerly."""
        device, contexts = self.pipe.device, len(self.pipe.context_names)
        if self.uses_cuda_graphs:
            with self._lock:
                run = self._runs.get(key)
                if run is None:
                    run = self._runs[key] = _Run.allocate(key, self.chunk_steps, contexts,
                                                          noise.to(device, non_blocking=True))
                    while len(self._runs) > self.max_cached_runs:
                        self._runs.popitem(last=False)  # a request still using it keeps its own reference
                    run.lock.acquire()
                    return run, True
                if run.lock.acquire(blocking=False):
                    self._runs.move_to_end(key)
                    run.noise.copy_(noise, non_blocking=True)
                    return run, True
        return _Run.allocate(key, self.chunk_steps, contexts, noise.to(device, non_blocking=True)), False

    def _run_chunk(self, run: _Run, start: int, length: int, graphed: bool) -> None:
        """Steps start ... start + length - 1: a graph replay once captured; the first time, with graphs, the
        eager warm-up run then the capture; without, eagerly with the pipeline's step function."""
        run.start.fill_(start)
        graph = run.graphs.get(length)
        if graph is not None:
            graph.replay()
            return
        if not (graphed and self.uses_cuda_graphs):
            self.chunk(run, length, self.pipe.step_function)
            return
        # The plain step: a compiled step (reduce-overhead) brings CUDA graphs of its own, which cannot nest.
        body = partial(self.chunk, run, length, self.pipe.denoise_step)
        warm_up(body)  # this chunk's real run; the capture below only records
        try:
            with self._lock:
                run.graphs[length] = capture(body)
        except Exception as err:  # graph support varies (kernels that sync, drivers); eager always works
            self._fall_back(f"capturing a {length}-step chunk failed ({type(err).__name__}: {err})")

    @staticmethod
    def chunk(run: _Run, length: int, step: Step) -> None:
        """The captured body: ``length`` steps from ``run.start``, everything read from and written to the run's
        buffers at indices computed on the device, so one recording serves every chunk of this length."""
        sample = run.sample
        for offset in range(length):
            position = run.start + offset
            sample, clean = step(sample, run.timesteps.index_select(0, position).squeeze(0), run.context,
                                 run.coefficients.index_select(0, position).squeeze(0),
                                 run.noise.index_select(0, position + 1).squeeze(0), run.guidance)
            run.frames[offset].copy_(sample)
            run.clean[offset].copy_(clean)
        run.sample.copy_(sample)
