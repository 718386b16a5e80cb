"""Fast sampling for SpritePipeline: torch.compile or OpenVINO for the U-Net, batching of requests in flight, and
compiling in the background while the app serves. The pipeline's math is in model/pipeline.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from functools import partial

import torch

from .batching import ContinuousBatcher
from .deepcache import split_forward
from .engine import openvino_engine, race_engines
from .fast import compile_error_of, compiled_or_eager, compiled_step, eager_predictor, fast_predictor
from .schedule import unet_timestep


class FastSampling:
    """SpritePipeline's speed settings (a mixin: it uses the pipeline's U-Net, device and reverse step)."""

    def enable_fast_sampling(self, compile: bool = True, bf16: bool = False,
                             batch_sizes: Collection[int] | None = None, whole_step: bool | None = None,
                             engine: str = "torch") -> None:
        """Use torch.compile and/or bf16 (see model/fast.py); call after .to(device).

        whole_step: compile the whole reverse step (U-Net, guidance and the update) rather than the
            U-Net alone; the default on CUDA, where it makes each step one CUDA graph replay instead of
            a graph plus a dozen small kernel launches.
        batch_sizes: U-Net alone only: compile for these U-Net batch sizes (2N rows for N sprites with
            guidance), now, and run other sizes eager. The new path is swapped in once compiled, so
            another thread may keep sampling on the old one meanwhile (the app warms up this way).
        engine: "auto" also converts the U-Net with OpenVINO where it is installed (model/engine.py) and, for each
            of ``batch_sizes``, keeps whichever of the two ran it faster here; ``self.engine`` says which won.
        """
        whole_step = self.device.type == "cuda" if whole_step is None else whole_step
        if whole_step and compile:
            if batch_sizes is not None:
                raise ValueError("batch_sizes applies to compiling the U-Net alone (whole_step=False)")
            if self.batcher is not None:
                raise ValueError("a compiled whole step runs one request's U-Net call itself: not with batching")
            self.noise_predictor = fast_predictor(self.unet, compile=False, bf16=bf16)
            self.step_function = compiled_step(self.denoise_step, self.device.type)
            return
        predictor = fast_predictor(self.unet, compile=compile, bf16=bf16, batch_sizes=batch_sizes)
        size, contexts = self.unet.config.sample_size, self.unet.config.num_class_embeds  # guidance rows too
        with torch.inference_mode():  # sampling runs in inference mode: compile for that
            for rows in batch_sizes or ():
                predictor(torch.zeros(rows, 3, size, size, device=self.device),
                          torch.full((rows,), float(unet_timestep(self.num_train_steps)), device=self.device),
                          torch.zeros(rows, contexts, device=self.device))
        if engine == "auto" and batch_sizes:
            predictor, self.engine = race_engines(self.unet, predictor, batch_sizes)
        self.noise_predictor = predictor
        if compile and os.environ.get("SPRITE_DISABLE_COMPILE") != "1":  # DeepCache's passes: compiled at first use
            self.split_forward = compiled_or_eager(partial(split_forward, self.unet), None, batch_sizes)
        self.compile_error = compile_error_of(predictor)
        self.compiled_batch_sizes = tuple(sorted(batch_sizes or ())) if compile and not self.compile_error else ()
        self.step_function = self.denoise_step

    def use_engine(self, name: str) -> None:
        """Run the U-Net on one of model/engine.py's OPENVINO_ENGINES, by name (the tools' --engine); a ValueError
        with the reason where it cannot run here (not installed, no bf16 instructions, int8 on other contexts)."""
        predictor, why = openvino_engine(self, name)
        if predictor is None:
            raise ValueError(why)
        self.noise_predictor, self.engine = predictor, name

    def enable_batching(self, **options) -> ContinuousBatcher:
        """Merge the U-Net calls of every request in flight, from any thread, into one call per step
        (model/batching.py; ``options`` go to ContinuousBatcher). Each request's sprites stay what they are
        when it runs alone."""
        if self.step_function != self.denoise_step:
            raise ValueError("batching shares the U-Net call, which a compiled whole step keeps to itself")
        # The current predictor at each call: a background compile swaps it in while requests are served.
        self.batcher = ContinuousBatcher(lambda *rows: self.noise_predictor(*rows),
                                         buckets=lambda: self.compiled_batch_sizes, **options)
        return self.batcher

    def compile_in_background(self, num_images: int = 16, batch_sizes: Collection[int] | None = None,
                              engine: str = "auto") -> threading.Thread | None:
        """Compile for ``num_images`` sprites (N rows, 2N with guidance) in a thread; sample eager meanwhile.

        The app's way to fast sampling without making a request wait for a compile: other sizes
        stay eager. CPU only: on a GPU, enable_fast_sampling compiles the whole step instead (measured in
        benchmarks/sampling.py, not yet inside the app). SPRITE_DISABLE_COMPILE=1 skips it.
        batch_sizes: the U-Net row counts to compile for instead (with batching: the buckets merged calls are
        padded to). ``self.compiling`` is True until the compiled U-Net is in use. engine: as in enable_fast_sampling.
        Returns the started thread, or None.
        """
        sizes = tuple(sorted(batch_sizes or (num_images, 2 * num_images)))
        what = f"batches of {', '.join(map(str, sizes))} U-Net rows" if batch_sizes else f"{num_images} sprites"

        def work() -> None:
            start = time.perf_counter()
            self.enable_fast_sampling(batch_sizes=sizes, engine=engine)
            self.compiling = False
            if self.compile_error:
                print(f"torch.compile is unavailable here ({self.compile_error}): every run uses the eager U-Net",
                      flush=True)
            else:
                print(f"compiled the U-Net for {what} in {time.perf_counter() - start:.0f} s; engine: {self.engine}",
                      flush=True)
        if os.environ.get("SPRITE_DISABLE_COMPILE") == "1" or self.device.type != "cpu":
            return None
        self.compiling = True
        print(f"compiling the U-Net for {what} in the background; sampling eager meanwhile", flush=True)
        thread = threading.Thread(target=work, name="compile", daemon=True)
        thread.start()
        return thread

    def disable_fast_sampling(self) -> None:
        """Back to the eager fp32 reference."""
        self.noise_predictor = eager_predictor(self.unet)
        self.split_forward = partial(split_forward, self.unet)
        self.compiled_batch_sizes = ()
        self.compile_error = None
        self.step_function = self.denoise_step
