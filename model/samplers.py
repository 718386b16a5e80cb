"""Every sampler the project offers, in one registry: the app, the API, training's sample grids, evaluation
and the benchmarks all read ``SAMPLERS``.

DDPM and DDIM are the course's: SpritePipeline writes their update as the formula
``sample = s1 * (sample - s2 * predicted_noise) + s3 * extra_noise``, because that is what the demo teaches.
The others are diffusers' schedulers, built from the model's own saved scheduler config (so they share its
betas, its prediction type and its "trailing" timesteps) and run through the same loop by ``scheduler.step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)


@dataclass(frozen=True)
class Sampler:
    """One way to run the reverse process."""

    name: str  # what the API, the command lines and the JSON results say
    label: str  # what the app shows
    deterministic: bool  # same starting noise -> same sprites, no noise drawn along the way
    typical_steps: int  # where it usually looks right with the bundled model (docs/samplers.md measures it)
    hint: str  # one line for the app
    scheduler_class: type[SchedulerMixin] | None = None  # None: the course's formula in SpritePipeline
    scheduler_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_course_formula(self) -> bool:
        return self.scheduler_class is None

    def make_scheduler(self, config: Any) -> SchedulerMixin:
        """A fresh scheduler for one request: multistep solvers keep state between steps, so none is shared."""
        if self.scheduler_class is None:
            raise ValueError(f"{self.name} is the course's own update; it has no diffusers scheduler here")
        return self.scheduler_class.from_config(config, **self.scheduler_options)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", "DDPM", False, 500,
            "The course's sampler: removes the predicted noise, then re-adds fresh noise; made for all 500 steps"),
    Sampler("ddim", "DDIM", True, 25,
            "Deterministic (no noise re-added), so it can skip steps: 10-50"),
    Sampler("dpm++2m", "DPM-Solver++ 2M", True, 10,
            "A second-order ODE solver that reuses the previous step's prediction: deterministic, 5-20 steps",
            DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    Sampler("dpm++2m-sde", "DPM-Solver++ 2M SDE", False, 10,
            "DPM-Solver++ 2M that re-adds noise like DDPM: cleaner backgrounds than the deterministic solvers, "
            "10-20 steps",
            DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    Sampler("unipc", "UniPC", True, 10,
            "A predictor-corrector ODE solver: deterministic, 5-20 steps",
            UniPCMultistepScheduler),
    Sampler("euler-a", "Euler ancestral", False, 30,
            "Euler steps in noise-level space that re-add noise each step: not deterministic, 20-50 steps",
            EulerAncestralDiscreteScheduler),
)}


def get_sampler(name: str) -> Sampler:
    """The registry entry for ``name``; an unknown name gets the list of known ones."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}") from None
