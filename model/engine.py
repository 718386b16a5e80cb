"""The U-Net on OpenVINO, a CPU inference engine: optional, used where it is installed and works.

torch.compile (model/fast.py) fuses the U-Net's elementwise work into torch's own kernels and needs a compile
per batch size (tens of seconds each on 2 cores). OpenVINO converts the network once, for any batch size, in
seconds, and runs it with its own CPU kernels: in fp32, in bf16 where the CPU has bf16 instructions, or in int8
after NNCF's post-training quantization. It is not a dependency: ``pip install openvino`` adds it (and ``nncf``
for int8). Where it is missing or its conversion fails, ``openvino_predictor`` says why and the caller keeps torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterable

import torch
from diffusers import UNet2DModel

from .fast import NoisePredictor, compile_failure

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantized layers; the rest stay fp32
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _Forward(torch.nn.Module):
    """The U-Net as a plain function of three tensors, the form a converter traces."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, class_labels=context).sample


def _as_arrays(inputs: Inputs) -> list:
    return [x.numpy(force=True) for x in inputs]


def _quantize_int8(nncf, model, calibration: Iterable[Inputs]):
    """NNCF's post-training int8 quantization, its activation ranges taken from ``calibration``.

    Only the convolutions are quantized: in a trial that also quantized the time and context embeddings'
    MatMuls and the elementwise Adds and Multiplies, the bundled model's sprites fell apart.
    """
    nncf.set_log_level(logging.ERROR)  # its per-node notes would land in the benchmarks' tables on stdout
    batches = list(calibration)
    with contextlib.redirect_stdout(sys.stderr):  # and its progress bars
        return nncf.quantize(model, nncf.Dataset(batches, _as_arrays), subset_size=len(batches),
                             preset=nncf.QuantizationPreset.MIXED,
                             ignored_scope=nncf.IgnoredScope(types=["MatMul", "Add", "Multiply"]),
                             advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1))


def openvino_predictor(unet: UNet2DModel, precision: str = "fp32", calibration: Iterable[Inputs] | None = None
                       ) -> tuple[NoisePredictor | None, str | None]:
    """(predictor, None) with the U-Net converted to OpenVINO for the CPU; (None, why) where it cannot be.

    precision: "fp32"; "bf16" (only where the CPU has bf16 instructions: elsewhere OpenVINO ignores the hint and
    runs fp32, so it is refused here rather than mislabelled); "int8" (needs ``nncf`` and ``calibration``, U-Net
    inputs like the sampler's: calibration_inputs).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration inputs (calibration_inputs)")
    try:
        import openvino as ov
    except ImportError:
        return None, "OpenVINO is not installed (pip install openvino)"
    if unet.device.type != "cpu":
        return None, "OpenVINO runs the U-Net on the CPU only"
    if precision == "int8":
        try:
            import nncf
        except ImportError:
            return None, "int8 needs NNCF (pip install nncf)"
    size, contexts = unet.config.sample_size, unet.config.num_class_embeds
    example = (torch.zeros(2, 3, size, size), torch.full((2,), 500.0), torch.zeros(2, contexts))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # diffusers' shape checks, constant here
            model = ov.convert_model(_Forward(unet).eval(), example_input=example,
                                     input=[([-1, 3, size, size], ov.Type.f32), ([-1], ov.Type.f32),
                                            ([-1, contexts], ov.Type.f32)])
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return None, "this CPU has no bf16 instructions"
        if precision == "int8":
            model = _quantize_int8(nncf, model, calibration)
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception as err:  # a converter or plugin failure of any kind: torch still works
        return None, f"OpenVINO could not convert the U-Net ({compile_failure(err)})"

    def predict(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # A call makes its own infer request, so threads may call at once (one shared request may not be).
        out = compiled(_as_arrays((sample, timestep, context)))
        return torch.from_numpy(out[0].copy())
    return predict, None


def calibration_inputs(pipe, sampler: str = "dpm++2m-sde", steps: int = 10, rows: int = 32, seed: int = 0
                       ) -> list[Inputs]:
    """U-Net inputs for int8 calibration, one batch per step of ``sampler``: real sprites of the bundled set,
    noised to that step's timestep, half with their context and half unconditional (guidance's two passes). A
    guidance-distilled model's conditional half gets scales drawn evenly over its knots, its other half scale 1,
    as the pipeline feeds it."""
    from .images import sprite_tensor
    from .samplers import get_sampler
    from .sprites import default_sprites
    images, labels, _ = default_sprites(pipe.unet.config.sample_size)
    if labels.shape[1] != len(pipe.context_names):
        raise ValueError(f"the bundled sprites have {labels.shape[1]} contexts, the model "
                         f"{len(pipe.context_names)} ({', '.join(pipe.context_names)})")
    knots = pipe.guidance_knots
    scheduler = get_sampler(sampler).make_scheduler(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for t in scheduler.timesteps:  # the U-Net's timesteps: course step t + 1 (model/schedule.py, unet_timestep)
        pick = torch.randint(len(images), (rows,), generator=generator).numpy()
        clean = torch.cat([sprite_tensor(image) for image in images[pick]])
        noisy = pipe.noise_schedule.add_noise(clean, torch.randn(clean.shape, generator=generator), int(t) + 1)
        context = torch.from_numpy(labels[pick]).float()
        context[rows // 2:] = 0
        if knots:
            scales = knots[0] + torch.rand(rows, generator=generator) * (knots[-1] - knots[0])
            context = pipe.with_guidance(context, scales.where(torch.arange(rows) < rows // 2, 1.0))
        batches.append((noisy, torch.full((rows,), float(t)), context))
    return batches


OPENVINO_ENGINES = {"openvino": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8"}


def openvino_engine(pipe, name: str) -> tuple[NoisePredictor | None, str | None]:
    """openvino_predictor for one of OPENVINO_ENGINES, int8 calibrated on calibration_inputs (the benchmarks' and
    evaluate.py's way to pick an engine by name)."""
    precision = OPENVINO_ENGINES[name]
    return openvino_predictor(pipe.unet, precision, calibration_inputs(pipe) if precision == "int8" else None)


def fastest(candidates: dict[str, NoisePredictor], sizes: Collection[int],
            inputs: Callable[[int], Inputs], calls: int = 5
            ) -> tuple[NoisePredictor, dict[int, str]]:
    """The quickest candidate at each batch size, timed here (best of ``calls`` after a warm-up call): one
    predictor that hands each call to its size's winner (the first candidate for other sizes), and the winners."""
    names, winners = list(candidates), {}
    with torch.inference_mode():
        for rows in sizes:
            x = inputs(rows)
            best = {}
            for name in names:
                candidates[name](*x)
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    candidates[name](*x)
                    times.append(time.perf_counter() - start)
                best[name] = min(times)
            winners[rows] = min(best, key=best.get)
    by_size = {rows: candidates[name] for rows, name in winners.items()}
    default = candidates[names[0]]

    def predict(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return by_size.get(sample.shape[0], default)(sample, timestep, context)
    predict.wrapped = default  # compile_error_of looks through to torch's predictor
    return predict, winners


def race_engines(unet: UNet2DModel, compiled: NoisePredictor, batch_sizes: Collection[int]
                 ) -> tuple[NoisePredictor, str]:
    """torch's predictor against OpenVINO's in fp32 at each size, timed here: (the faster at each size, which won);
    torch alone, and why, where OpenVINO is missing or fails. Not bf16: at DDPM 500 it costs precision
    (docs/performance.md)."""
    converted, why = openvino_predictor(unet)
    if converted is None:
        return compiled, f"torch ({why})"
    size, columns = unet.config.sample_size, unet.config.num_class_embeds

    def inputs(rows: int) -> Inputs:
        return (torch.randn(rows, 3, size, size), torch.full((rows,), 300.0),
                torch.eye(columns)[torch.arange(rows) % columns])
    predictor, winners = fastest({"torch": compiled, "OpenVINO": converted}, sorted(batch_sizes), inputs)
    return predictor, ", ".join(f"{name} at {rows} rows" for rows, name in winners.items())
