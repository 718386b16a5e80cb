"""The U-Net on OpenVINO, a CPU inference engine: optional, used where it is installed and works.

torch.compile (model/fast.py) fuses the U-Net's elementwise work into torch's own kernels and needs a compile
per batch size (tens of seconds each on 2 cores). OpenVINO converts the network once, for any batch size, in
seconds, and runs it with its own CPU kernels. It is not a dependency: ``pip install openvino`` adds it. Where
it is missing or its conversion fails, ``openvino_predictor`` says why and the caller keeps torch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection

import torch
from diffusers import UNet2DModel

from .fast import NoisePredictor, compile_failure

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class _Forward(torch.nn.Module):
    """The U-Net as a plain function of three tensors, the form a converter traces."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, class_labels=context).sample


def openvino_predictor(unet: UNet2DModel, precision: str = "fp32") -> tuple[NoisePredictor | None, str | None]:
    """(predictor, None) with the U-Net converted to OpenVINO for the CPU; (None, why) where it cannot be."""
    try:
        import openvino as ov
    except ImportError:
        return None, "OpenVINO is not installed (pip install openvino)"
    if unet.device.type != "cpu":
        return None, "OpenVINO runs the U-Net on the CPU only"
    size, contexts = unet.config.sample_size, unet.config.num_class_embeds
    example = (torch.zeros(2, 3, size, size), torch.full((2,), 500.0), torch.zeros(2, contexts))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # diffusers' shape checks, constant here
            model = ov.convert_model(_Forward(unet).eval(), example_input=example,
                                     input=[([-1, 3, size, size], ov.Type.f32), ([-1], ov.Type.f32),
                                            ([-1, contexts], ov.Type.f32)])
        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception as err:  # a converter or plugin failure of any kind: torch still works
        return None, f"OpenVINO could not convert the U-Net ({compile_failure(err)})"

    def predict(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # A call makes its own infer request, so threads may call at once (one shared request may not be).
        out = compiled([sample.numpy(force=True), timestep.numpy(force=True), context.numpy(force=True)])
        return torch.from_numpy(out[0].copy())
    return predict, None


def fastest(candidates: dict[str, NoisePredictor], sizes: Collection[int],
            inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], calls: int = 5
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
    """torch's predictor against OpenVINO's at each size, timed here: (the faster at each size, which won);
    torch alone, and why, where OpenVINO is missing or fails."""
    converted, why = openvino_predictor(unet)
    if converted is None:
        return compiled, f"torch ({why})"
    size, columns = unet.config.sample_size, unet.config.num_class_embeds

    def inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.randn(rows, 3, size, size), torch.full((rows,), 300.0),
                torch.eye(columns)[torch.arange(rows) % columns])
    predictor, winners = fastest({"torch": compiled, "OpenVINO": converted}, sorted(batch_sizes), inputs)
    return predictor, ", ".join(f"{name} at {rows} rows" for rows, name in winners.items())
