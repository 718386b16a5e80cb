"""Every fast sampling path matches the eager fp32 reference within the stated tolerance.

Tolerances (docs/performance.md): torch.compile in fp32 changes only the order of float
operations, so the final samples agree to 1e-3 in [-1, 1] units (and the uint8 sprites to
at most 1 level). bf16 autocast rounds activations to 8 bits of mantissa, so it is held to
a looser bound: final uint8 sprites within 8 levels on average.
"""


import sys
import time

import numpy as np
import pytest
import torch

from model import SpritePipeline, build_unet, make_scheduler

pytestmark = pytest.mark.slow  # starts processes, servers, compiles or a browser: pytest -m 'not slow' skips it

NAMES = ["hero", "non-hero", "food", "spell", "item"]


@pytest.fixture(scope="module")
def pipes():
    torch.manual_seed(0)
    reference = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)
    fast = SpritePipeline(reference.unet, reference.scheduler, NAMES)  # same weights, another predictor
    return reference, fast


@pytest.fixture
def compiled_rows(monkeypatch):
    """torch.compile replaced by a recorder: the batch size of every call to the "compiled" U-Net."""
    rows = []

    def recording_compile(fn, **kwargs):
        def compiled(sample, *args):
            rows.append(sample.shape[0])
            return fn(sample, *args)
        return compiled
    monkeypatch.setattr(torch, "compile", recording_compile)
    return rows


def _final(pipe, **kwargs):
    samples = []
    out = pipe("food", num_images=2, num_inference_steps=8, seed=3,
               callback=lambda i, t, x, x0: samples.append(x), **kwargs)
    return samples[-1].float(), out.array


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_compiled_matches_eager(pipes, sampler):
    reference, fast = pipes
    fast.enable_fast_sampling(compile=True, bf16=False)
    ref_x, ref_img = _final(reference, sampler=sampler)
    x, img = _final(fast, sampler=sampler)
    assert (x - ref_x).abs().max() < 1e-3
    assert np.abs(img.astype(int) - ref_img.astype(int)).max() <= 1


def test_bf16_close_to_eager(pipes):
    reference, fast = pipes
    fast.enable_fast_sampling(compile=False, bf16=True)
    _, ref_img = _final(reference, sampler="ddim")
    _, img = _final(fast, sampler="ddim")
    assert np.abs(img.astype(float) - ref_img.astype(float)).mean() <= 8
    fast.disable_fast_sampling()
    _, back = _final(fast, sampler="ddim")
    assert np.array_equal(back, ref_img), "disable_fast_sampling restores the reference path"


def test_compile_failure_falls_back_to_eager(pipes, monkeypatch):
    reference, fast = pipes

    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no compiler here")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    fast.enable_fast_sampling(compile=True)
    _, ref_img = _final(reference, sampler="ddim")
    _, img = _final(fast, sampler="ddim")
    assert np.array_equal(img, ref_img)
    fast.disable_fast_sampling()


def test_compile_only_for_chosen_batch_sizes(pipes, compiled_rows):
    """Other batch sizes run eager (no request waits for a compile); the chosen ones are compiled up front."""
    reference, fast = pipes
    fast.enable_fast_sampling(compile=True, batch_sizes=(4,))
    assert compiled_rows == [4], "the chosen size is compiled when fast sampling is enabled"
    _, ref_img = _final(reference, sampler="ddim")
    _, img = _final(fast, sampler="ddim")  # 2 sprites, no guidance: 2 rows, eager
    assert compiled_rows == [4] and np.array_equal(img, ref_img)
    _final(fast, sampler="ddim", guidance_scale=2.0)  # 2 sprites with guidance: 4 rows, compiled
    assert compiled_rows == [4] * 9, "the warm-up call, then one call per step"
    fast.disable_fast_sampling()


def test_compiled_for_chosen_batch_size_matches_eager(pipes):
    reference, fast = pipes
    fast.enable_fast_sampling(compile=True, batch_sizes=(4,))
    ref_x, _ = _final(reference, sampler="ddpm", guidance_scale=2.0)
    x, _ = _final(fast, sampler="ddpm", guidance_scale=2.0)
    assert (x - ref_x).abs().max() < 1e-3
    fast.disable_fast_sampling()


def test_compile_in_background_warms_the_default_request(pipes, compiled_rows, monkeypatch):
    """The app's warm-up: N and 2N rows compiled in a thread, then swapped in; skipped when turned off."""
    _, fast = pipes
    monkeypatch.setitem(sys.modules, "openvino", None)  # torch alone: no engine race calling the U-Net more
    monkeypatch.setenv("SPRITE_DISABLE_COMPILE", "1")
    eager = fast.noise_predictor
    assert fast.compile_in_background(num_images=2) is None
    assert compiled_rows == [] and fast.noise_predictor is eager
    monkeypatch.delenv("SPRITE_DISABLE_COMPILE")
    compiling = fast.compile_in_background(num_images=2)
    assert fast.compiling  # the app's stats line says a run was eager while this holds
    compiling.join()
    assert compiled_rows == [2, 4] and fast.noise_predictor is not eager and not fast.compiling
    fast.disable_fast_sampling()


@pytest.mark.parametrize("sampler,guidance_scale", [("ddpm", 1.0), ("ddpm", 2.0), ("ddim", 2.0)])
def test_compiled_whole_step_matches_eager(pipes, sampler, guidance_scale):
    """The GPU's default path (one compiled function per step), here on the CPU."""
    reference, fast = pipes
    fast.enable_fast_sampling(compile=True, whole_step=True)
    ref_x, ref_img = _final(reference, sampler=sampler, guidance_scale=guidance_scale)
    x, img = _final(fast, sampler=sampler, guidance_scale=guidance_scale)
    assert (x - ref_x).abs().max() < 1e-3
    assert np.abs(img.astype(int) - ref_img.astype(int)).max() <= 1
    fast.disable_fast_sampling()


def test_compiled_whole_step_compiles_once_for_every_step(pipes):
    """Per-step numbers are tensors, so the compiled step serves every t without recompiling."""
    from torch._dynamo.utils import counters

    _, fast = pipes
    fast.enable_fast_sampling(compile=True, whole_step=True)
    _final(fast, sampler="ddpm", guidance_scale=3.0)
    before = counters["stats"]["unique_graphs"]
    _final(fast, sampler="ddpm", guidance_scale=1.5)  # another scale, other coefficients, other t
    pipe_steps = []
    fast("hero", num_images=2, num_inference_steps=20, seed=1, guidance_scale=2.5,
         callback=lambda i, t, x, x0: pipe_steps.append(t))
    assert len(pipe_steps) == 20 and counters["stats"]["unique_graphs"] == before
    fast.disable_fast_sampling()


def test_compiled_for_chosen_batch_sizes_serves_requests_without_recompiling(pipes):
    """The app's warm-up compiles N and 2N rows; requests with and without guidance then reuse them."""
    from torch._dynamo.utils import counters

    _, fast = pipes
    fast.enable_fast_sampling(compile=True, batch_sizes=(2, 4))
    before = counters["stats"]["unique_graphs"]
    _final(fast, sampler="ddpm", guidance_scale=2.0)
    _final(fast, sampler="ddpm")
    assert counters["stats"]["unique_graphs"] == before
    fast.disable_fast_sampling()



def test_an_eager_request_waits_out_a_trace_in_another_thread():
    """torch.fx patches nn.Module.__call__ process-wide while it traces (torch.compile does, in the app's
    background compile). A U-Net call from another thread then fails outright; the eager predictor waits for
    the trace to end and returns the same noise prediction."""
    import threading

    from model.fast import eager_predictor

    torch.manual_seed(0)
    unet = build_unet(5, "tiny").eval()
    args = (torch.randn(2, 3, 16, 16), torch.tensor(10), torch.eye(5)[:2])
    with torch.no_grad():
        reference = unet(*args[:2], class_labels=args[2]).sample
    tracing, release = threading.Event(), threading.Event()

    class SlowToTrace(torch.nn.Module):
        def forward(self, x):
            tracing.set()
            release.wait(10)
            return x + 1

    tracer = threading.Thread(target=torch.fx.symbolic_trace, args=(SlowToTrace(),))
    tracer.start()
    try:
        assert tracing.wait(10)
        with pytest.raises(NameError, match="is not installed as a submodule"), torch.no_grad():
            unet(*args[:2], class_labels=args[2])  # the collision itself, as requests met it
        threading.Timer(0.5, release.set).start()
        start = time.perf_counter()
        with torch.no_grad():
            waited = eager_predictor(unet)(*args)
        assert time.perf_counter() - start >= 0.4  # it waited for the trace to end ...
        torch.testing.assert_close(waited, reference)  # ... and then predicted as usual
    finally:
        release.set()
        tracer.join()


def test_requests_during_a_cold_background_compile_never_fail():
    """The race as requests met it, on a fresh, empty inductor cache (a new Space, a retrained model):
    benchmarks/compile_race.py compiles in the background in a new process while one thread calls the bare
    U-Net, as requests did before the fix, and another sends pipeline requests, as the app does. The bare calls
    meet torch.fx's trace ("not installed as a submodule"), the requests never fail. Python threads switch every
    10 us there instead of every 5 ms, so a cold start usually shows what the default timing hid in 1 of 24
    requests."""
    from benchmarks.compile_race import cold_runs

    runs = []
    # A cold start may never meet the trace (seen once on a fast VM: 0 collisions in 6,899 bare calls), and then it
    # shows nothing: start again, up to three times, until one does.
    while len(runs) < 3 and not (runs and runs[-1]["bare_collisions"]):
        runs += cold_runs(runs=1, preset="minimal")  # a one-level U-Net: the quickest cold compile (minutes)
    assert all(run["finished"] and run["app_requests"] > 20 for run in runs), runs
    assert runs[-1]["bare_collisions"] > 0, runs  # the race is real ...
    assert all(run["app_failures"] == 0 for run in runs), runs  # ... and the app's requests wait it out
