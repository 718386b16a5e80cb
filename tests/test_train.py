"""training/train.py end to end (accelerate launch, resume after SIGKILL, two CPU processes, Hub push and
pull through a stand-in server), plus its checkpoint safety and its bad-input errors.

Every run uses the "tiny" preset on 32 sprites for a few steps, one thread per process.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import HUB_TOKEN
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from model import SpritePipeline, build_unet, load_pipeline, make_grid, make_scheduler, upscale
from model.schedule import NoiseSchedule
from model.unet import with_guidance_rows
from training import checkpointing, hub, plots, train
from training.checkpointing import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "training" / "train.py")
CONFIGS = ROOT / "training" / "configs"
NAMES = ["hero", "food", "spell"]
N_SPRITES = 32
PIPELINE_FILES = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "scheduler/scheduler_config.json"}


@pytest.fixture(scope="module")
def sprites(tmp_path_factory) -> Path:
    """A course-format dataset: 32 coloured squares on white, one colour per context."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    labels = np.eye(len(NAMES), dtype=np.float32)[np.arange(N_SPRITES) % len(NAMES)]
    images = np.full((N_SPRITES, 16, 16, 3), 255, np.uint8)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.uint8)
    for i in range(N_SPRITES):
        y, x = rng.integers(2, 6, 2)
        images[i, y:y + 8, x:x + 8] = colours[i % len(NAMES)]
    np.save(folder / "sprites_test.npy", images)
    np.save(folder / "sprite_labels_nc_test.npy", labels)
    return folder / "sprites_test.npy"


def tiny_args(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--context_names", ",".join(NAMES), "--model_config", "tiny",
            "--output_dir", str(output_dir), "--train_batch_size", "8", "--seed", "0", "--lr_warmup_steps", "0",
            "--samples_per_context", "2", "--sample_steps", "2", "--logging_steps", "1", "--logger", "none", *extra]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    """Run to the end; on a hang, fail with every process's Python stack (faulthandler on SIGABRT)."""
    proc = subprocess.Popen(cmd, env={**env, "PYTHONFAULTHANDLER": "1"}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own, so they are found as children, not by group.
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for member in family:  # each prints where it is stuck, then goes
            member.send_signal(signal.SIGABRT)
        psutil.wait_procs(family, timeout=5)
        for member in family:
            if member.is_running():
                member.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd[-8:])}\n--- stderr, last part ---\n{err[-8000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights_sum(folder: Path) -> float:
    weights = load_file(folder / "unet/diffusion_pytorch_model.safetensors")
    return float(sum(weights[k].double().sum() for k in sorted(weights)))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def files_mention(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


# ---- the training math -----------------------------------------------------------------------


def test_noisy_batch_is_correct_ddpm_noising_with_uniform_steps_and_context_dropout():
    torch.manual_seed(0)
    schedule = NoiseSchedule(make_scheduler())
    n = 20000
    x0 = torch.rand(n, 3, 2, 2) * 2 - 1
    context = torch.eye(3)[torch.arange(n) % 3]
    noisy, t, dropped, noise, _ = train.noisy_batch(x0, context, schedule, context_dropout=0.1, hflip=False)
    assert t.min() == 1 and t.max() == schedule.num_steps  # every step of 1..T can be drawn
    assert abs(t.double().mean().item() - (schedule.num_steps + 1) / 2) < 5  # uniform: mean 250.5
    ab = schedule.alpha_bar[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(noisy, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)  # sqrt on the noise term
    zeroed = (dropped.sum(1) == 0).float().mean().item()
    assert 0.09 < zeroed < 0.11
    kept = dropped.sum(1) > 0
    assert torch.equal(dropped[kept], context[kept])


def test_earlier_timestep_bias_draws_the_low_noise_steps_more_often():
    schedule = NoiseSchedule(make_scheduler())
    assert train.timestep_weights(500) is None and train.timestep_weights(500, "earlier", 1.0) is None  # uniform
    weights = train.timestep_weights(500, "earlier", multiplier=5, portion=0.1)
    assert weights.shape == (500,) and abs(weights.sum().item() - 1) < 1e-6
    assert torch.allclose(weights[:50], 5 * weights[50:].max()) and torch.allclose(weights[50:], weights[-1])
    torch.manual_seed(0)
    _, t, *_ = train.noisy_batch(torch.zeros(20000, 3, 2, 2), torch.ones(20000, 1), schedule, 0.0, False, weights)
    assert t.min() == 1 and t.max() == 500
    assert abs((t <= 50).float().mean().item() - 5 * 50 / (5 * 50 + 450)) < 0.015  # 0.357 of the draws
    later = train.timestep_weights(500, "later", multiplier=3, portion=0.5)
    assert torch.allclose(later[250:], 3 * later[:250].max())


def test_hflip_mirrors_about_half_of_the_batch():
    torch.manual_seed(0)
    schedule = NoiseSchedule(make_scheduler())
    x0 = torch.arange(4.0).repeat(1000, 3, 4, 1) / 4  # rows 0 1 2 3: asymmetric
    torch.manual_seed(1)
    noisy, t, _, noise, _ = train.noisy_batch(x0, torch.ones(1000, 1), schedule, 0.0, hflip=True)
    ab = schedule.alpha_bar[t].float().view(-1, 1, 1, 1)
    clean = (noisy - (1 - ab).sqrt() * noise) / ab.sqrt()
    flipped = torch.isclose(clean, x0.flip(-1), atol=1e-3).flatten(1).all(1)
    same = torch.isclose(clean, x0, atol=1e-3).flatten(1).all(1)
    assert bool((flipped ^ same).all())
    assert 400 < int(flipped.sum()) < 600


def test_diffusion_loss_regresses_noise_or_v_with_optional_min_snr_weights():
    schedule = NoiseSchedule(make_scheduler())
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 3, 4, 4, generator=generator) * 2 - 1, torch.randn(3, 3, 4, 4, generator=generator)
    t = torch.tensor([1, 250, 500])  # SNR about 1e4, 0.7 and 0.006
    zero = torch.zeros_like(x0)
    per_sample = (noise**2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(train.diffusion_loss(zero, x0, noise, t, schedule), per_sample.mean())
    v = schedule.velocity(x0, noise, t)
    torch.testing.assert_close(v, schedule.alpha_bar[t].sqrt().float().view(-1, 1, 1, 1) * noise
                               - (1 - schedule.alpha_bar[t]).sqrt().float().view(-1, 1, 1, 1) * x0)
    torch.testing.assert_close(train.diffusion_loss(zero, x0, noise, t, schedule, "v_prediction"), (v**2).mean())
    # min-SNR-5: the easy step t = 1 is weighted down to 5 / SNR; the noisy ones keep weight 1 (epsilon).
    snr = schedule.snr(t).float()
    weighted = train.diffusion_loss(zero, x0, noise, t, schedule, snr_gamma=5.0)
    torch.testing.assert_close(weighted, (per_sample * torch.tensor([5 / snr[0], 1.0, 1.0])).mean())
    assert snr[0] > 1000 and snr[2] < 0.01


# ---- end to end ------------------------------------------------------------------------------


def test_fused_adamw_takes_the_same_steps_as_the_default_one():
    """train.adamw picks the fused kernel (faster on CPU and GPU); its updates must be the reference's."""
    torch.manual_seed(0)
    reference = build_unet(len(NAMES), "tiny")
    fused = build_unet(len(NAMES), "tiny")
    fused.load_state_dict(reference.state_dict())
    settings = {"lr": 1e-3, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8}
    optimizers = [torch.optim.AdamW(reference.parameters(), **settings), train.adamw(fused.parameters(), **settings)]
    assert optimizers[1].defaults["fused"] is True
    x, t, context = torch.randn(4, 3, 16, 16), torch.tensor([1, 50, 200, 500]), torch.eye(3)[[0, 1, 2, 0]]
    for _ in range(3):
        for unet, optimizer in zip((reference, fused), optimizers, strict=True):
            unet(x, t, class_labels=context).sample.square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_foreach_ema_takes_the_same_steps_in_a_few_kernels():
    """train.ema_model updates all tensors with foreach kernels; its averages must be the per-tensor ones."""
    from diffusers.training_utils import EMAModel
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    unet = build_unet(len(NAMES), "tiny")
    ours = train.ema_model(unet, max_decay=0.999, inv_gamma=1.0, power=0.75)
    reference = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    counts = []
    for _ in range(5):
        with torch.no_grad():
            for param in unet.parameters():
                param.add_(torch.randn_like(param) * 0.01)
        with CountOps() as ops:
            ours.step(unet.parameters())
        counts.append(ops.count)
        reference.step(unet.parameters())
    for a, b in zip(ours.shadow_params, reference.shadow_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    tensors = len(list(unet.parameters()))
    assert tensors > 50 and max(counts) <= 4, f"{max(counts)} ops for {tensors} tensors"


@pytest.mark.slow
def test_accelerate_launch_trains_pushes_and_the_app_loader_pulls_it_back(sprites, tmp_path, hub_server):
    out = tmp_path / "run"
    env = clean_env(tmp_path, HF_ENDPOINT=hub_server.url)
    args = tiny_args(sprites, out, "--max_train_steps", "4", "--checkpointing_steps", "2", "--save_images_steps", "2",
                     "--logger", "tensorboard", "--push_to_hub", "--push_at_checkpoints",
                     "--hub_model_id", "tester/sprites-tiny", "--hub_token", HUB_TOKEN)
    result = run(launch("cpu.yaml", TRAIN, *args), env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert HUB_TOKEN not in log and not files_mention(out, HUB_TOKEN)
    assert re.search(r"saved checkpoint-2: \d+ MB on disk; keeping every one \(--checkpoints_total_limit\)", log)

    # The pipeline in the diffusers layout, holding the EMA weights (not the raw ones).
    assert all((out / name).is_file() for name in PIPELINE_FILES)
    exported = load_file(out / "unet/diffusion_pytorch_model.safetensors")
    assert_same_tensors(exported, load_file(out / "checkpoint-4/ema/diffusion_pytorch_model.safetensors"))
    raw = load_file(out / "checkpoint-4/model.safetensors")
    assert not all(torch.equal(exported[k], raw[k]) for k in raw)
    pipe = load_pipeline(out)
    assert pipe.context_names == NAMES
    assert pipe("food", num_images=2, num_inference_steps=2, sampler="ddim", seed=0).array.shape == (2, 16, 16, 3)

    # Sample grids (3 contexts x 2, 4x upscaled), the model card and the TensorBoard logs.
    assert (out / "samples" / "step_000002.png").is_file()
    assert Image.open(out / "samples.png").size == ((2 * 17 + 1) * 4, (3 * 17 + 1) * 4)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and card.data.license == "other"
    assert "pixel-art" in card.data.tags
    assert "samples.png" in card.text and "| train_batch_size | 8 |" in card.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "train")).Reload()
    assert {"loss", "lr", "images_per_sec"} <= set(events.Tags()["scalars"])
    assert "samples" in events.Tags()["images"]
    assert all(np.isfinite(e.value) and e.value > 0 for e in events.Scalars("loss"))

    # The Hub holds the pipeline, card and grid, not checkpoints or logs; the app's loader pulls it back.
    pushed = set(hub_server.files("tester/sprites-tiny"))
    assert PIPELINE_FILES | {"README.md", "samples.png", "training_args.json", *hub.FIGURES} == pushed
    assert len(hub_server.repos["tester/sprites-tiny"]) == 2  # at the step-2 checkpoint, then the final model
    pull = ("from model import load_pipeline; p = load_pipeline('tester/sprites-tiny'); w = p.unet.state_dict(); "
            "print(p.context_names, float(sum(w[k].double().sum() for k in sorted(w))))")
    pulled = run([sys.executable, "-c", pull], clean_env(tmp_path / "fresh", HF_ENDPOINT=hub_server.url))
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert pulled.stdout.split() == ["['hero',", "'food',", "'spell']", repr(weights_sum(out))]


@pytest.mark.slow
def test_failed_push_says_why_keeps_the_output_and_exits_nonzero(sprites, tmp_path, hub_server):
    out = tmp_path / "run"
    env = clean_env(tmp_path, HF_ENDPOINT=hub_server.url, HF_TOKEN=HUB_TOKEN)
    hub_server.fail = True
    args = tiny_args(sprites, out, "--max_train_steps", "1", "--checkpointing_steps", "0", "--push_to_hub",
                     "--hub_model_id", "tester/broken")
    result = run([sys.executable, TRAIN, *args], env)
    assert result.returncode != 0
    assert "push to Hub repo 'tester/broken' failed" in result.stderr and "500" in result.stderr
    assert f"kept in {out}" in result.stderr
    assert HUB_TOKEN not in result.stdout + result.stderr and not files_mention(out, HUB_TOKEN)
    assert all((out / name).is_file() for name in PIPELINE_FILES | {"README.md", "samples.png"})

    hub_server.fail = False  # the retry the error message suggests
    retry = run([sys.executable, "-m", "training.hub", str(out), "--hub_model_id", "tester/broken"], env)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert PIPELINE_FILES <= set(hub_server.files("tester/broken"))


@pytest.mark.slow
def test_resume_after_sigkill_restores_everything_and_matches_an_uninterrupted_run(sprites, tmp_path):
    env = clean_env(tmp_path)
    steps = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--save_images_steps", "0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = subprocess.Popen([sys.executable, TRAIN, *tiny_args(sprites, straight, *steps)], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = subprocess.Popen([sys.executable, TRAIN, *tiny_args(sprites, killed, *steps, "--debug_step_delay", "2")],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-2").is_dir() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert reference.wait(timeout=120) == 0
    last = checkpointing.list_checkpoints(killed)[-1]
    assert checkpointing.step_of(last) < 6 and not (killed / "model_index.json").exists()

    result = run([sys.executable, TRAIN, *tiny_args(sprites, killed, *steps, "--resume_from_checkpoint", "latest")],
                 env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {last.name} at step {checkpointing.step_of(last)}" in result.stderr

    # Same weights, optimizer moments, LR schedule and EMA as the run that was never interrupted.
    a, b = straight / "checkpoint-6", killed / "checkpoint-6"
    assert_same_tensors(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    assert_same_tensors(load_file(a / "ema/diffusion_pytorch_model.safetensors"),
                        load_file(b / "ema/diffusion_pytorch_model.safetensors"))
    assert json.loads((b / "ema/config.json").read_text())["optimization_step"] == 6
    opt_a, opt_b = (torch.load(p / "optimizer.bin", weights_only=True) for p in (a, b))
    for key, state in opt_a["state"].items():
        assert_same_tensors(state, opt_b["state"][key])
    sched_a, sched_b = (torch.load(p / "scheduler.bin", weights_only=True) for p in (a, b))
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 6 and sched_a["_last_lr"] == sched_b["_last_lr"]
    assert weights_sum(straight) == weights_sum(killed)
    # The loss history continues across the kill: the same rows, once each, as the uninterrupted run's.
    history = plots.read_loss_history(killed / "loss_history.csv")
    assert [row.step for row in history] == list(range(1, 7))
    assert history == plots.read_loss_history(straight / "loss_history.csv")


@pytest.mark.slow
def test_two_cpu_processes_train_one_model_on_disjoint_shards(sprites, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(sprites, out, "--train_batch_size", "4", "--max_train_steps", "4", "--checkpointing_steps", "2",
                     "--save_images_steps", "0", "--debug_record_indices")
    result = run(launch("cpu_2proc.yaml", "--main_process_port", str(free_port()), TRAIN, *args), clean_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MULTI_CPU with 2 process(es)" in result.stderr
    seen = [json.loads((out / f"seen_indices_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [len(s) for s in seen] == [4, 4]  # 32 sprites / (2 processes x 4) = 4 steps = one epoch each
    shards = [{i for batch in s for i in batch} for s in seen]
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(N_SPRITES))
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert load_pipeline(out).context_names == NAMES


# ---- the card's training figures ---------------------------------------------------------------


@pytest.fixture
def fresh_accelerator_state():
    """train.main run in this process leaves accelerate's global state behind; later tests need it clean."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_training_keeps_the_loss_history_and_the_card_plots_it_also_across_a_resume(sprites, tmp_path,
                                                                                     fresh_accelerator_state):
    out = tmp_path / "run"
    args = tiny_args(sprites, out, "--max_train_steps", "4", "--checkpointing_steps", "2", "--save_images_steps", "2")
    assert train.main(args) == 0
    history = plots.read_loss_history(out / "loss_history.csv")
    assert (out / "loss_history.csv").read_text().splitlines()[0] == "step,loss,learning_rate"
    assert [row.step for row in history] == [1, 2, 3, 4]  # --logging_steps 1
    assert all(math.isfinite(row.loss) and row.loss > 0 and row.learning_rate >= 0 for row in history)
    card = (out / "README.md").read_text()
    assert "![Training loss](loss.png)" in card and "samples_over_training.png" in card and "steps 2, 4" in card
    for figure in hub.FIGURES:
        with Image.open(out / figure) as image:
            image.verify()
    assert (out / "loss.png").stat().st_size < 100_000

    # A run killed after checkpoint-2 had logged steps 3 and 4; resuming retrains them, so those rows go.
    plots.write_loss_history(out / "loss_history.csv", [*history[:2], (3, 99.0, 1.0), (4, 99.0, 1.0)])
    assert train.main([*args, "--resume_from_checkpoint", "checkpoint-2"]) == 0
    resumed = plots.read_loss_history(out / "loss_history.csv")
    assert [row.step for row in resumed] == [1, 2, 3, 4] and resumed[:2] == history[:2]
    assert all(row.loss < 99 for row in resumed)


def test_initial_step_continues_an_exported_run_on_its_schedules(sprites, tmp_path, fresh_accelerator_state):
    """A run whose checkpoints are lost goes on from its weights where its cosine and EMA warm-up were."""
    schedule = ["--max_train_steps", "6", "--lr_warmup_steps", "2", "--checkpointing_steps", "0",
                "--save_images_steps", "0"]
    assert train.main(tiny_args(sprites, tmp_path / "whole", *schedule)) == 0
    whole = plots.read_loss_history(tmp_path / "whole" / "loss_history.csv")
    out = tmp_path / "rest"
    assert train.main(tiny_args(sprites, out, *schedule, "--initial_step", "4",
                                "--pretrained_model_name_or_path", str(tmp_path / "whole"))) == 0
    rest = plots.read_loss_history(out / "loss_history.csv")
    assert [row.step for row in rest] == [5, 6]
    assert [row.learning_rate for row in rest] == pytest.approx([row.learning_rate for row in whole[4:]])
    assert 0 < rest[0].learning_rate < whole[1].learning_rate
    assert json.loads((out / "training_args.json").read_text())["initial_step"] == 4


def test_class_balance_draws_small_contexts_as_often_as_asked(tmp_path, fresh_accelerator_state):
    contexts = torch.eye(3)[[0, 0, 0, 0, 1]]
    assert train.class_balance_weights(contexts, "sqrt").tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]  # masses 2 : 1
    assert train.class_balance_weights(contexts, "equal").tolist() == [0.25, 0.25, 0.25, 0.25, 1.0]
    labels = np.repeat([0, 1, 2], [26, 4, 2])  # a food-like context: 2 of 32 sprites
    images = np.full((32, 16, 16, 3), 255, np.uint8)
    images[:, 4:12, 4:12] = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.uint8)[labels, None, None]
    np.save(tmp_path / "sprites_skewed.npy", images)
    np.save(tmp_path / "sprite_labels_nc_skewed.npy", np.eye(3, dtype=np.float32)[labels])
    out = tmp_path / "run"
    assert train.main(tiny_args(tmp_path / "sprites_skewed.npy", out, "--max_train_steps", "12", "--class_balance",
                                "equal", "--checkpointing_steps", "0", "--save_images_steps", "0",
                                "--debug_record_indices")) == 0
    drawn = np.array([i for batch in json.loads((out / "seen_indices_rank0.json").read_text()) for i in batch])
    shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
    assert len(drawn) == 96 and shares.min() > 0.2  # about a third each, against 81%, 12% and 6% unbalanced


def test_a_resume_keeps_the_loss_rows_up_to_its_step_only(tmp_path):
    path = tmp_path / "loss_history.csv"
    assert plots.read_loss_history(path, up_to_step=3) == []  # no history yet: an empty one
    assert plots.write_loss_history(path, [(step, 1.0 / step, 1e-3) for step in range(10, 90, 10)])
    with path.open("a") as f:
        f.write("garbage,row,here\n")  # a hand-edited line is skipped, not fatal
    kept = plots.read_loss_history(path, up_to_step=40)
    assert kept == [(step, 1.0 / step, 1e-3) for step in (10, 20, 30, 40)]  # exact: floats round-trip
    assert [row.step for row in plots.read_loss_history(path)] == list(range(10, 90, 10))
    assert not plots.write_loss_history(tmp_path / "missing" / "loss_history.csv", kept)  # logged, not raised


def _fake_grids(folder: Path, steps: range) -> dict[int, np.ndarray]:
    """Sample grids as train.py writes them: 4x nearest-neighbour upscaled sheets of random sprites."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grids = {}
    for step in steps:
        grids[step] = np.asarray(upscale(make_grid(rng.integers(0, 256, (6, 16, 16, 3), np.uint8), ncols=2), 4))
        Image.fromarray(grids[step]).save(folder / f"step_{step:06d}.png")
    return grids


def test_samples_over_training_spreads_the_grids_from_first_to_last_with_exact_pixels(tmp_path):
    grids = _fake_grids(tmp_path / "samples", range(100, 1001, 100))
    steps = plots.samples_over_training(tmp_path / "samples", tmp_path / "over.png", max_columns=4)
    assert steps == [100, 400, 700, 1000]
    sheet = np.asarray(Image.open(tmp_path / "over.png").convert("RGB"))
    x = plots.GAP
    for step in steps:  # each grid pasted unscaled below its caption: every pixel the source's own
        h, w, _ = grids[step].shape
        np.testing.assert_array_equal(sheet[plots.CAPTION_HEIGHT:plots.CAPTION_HEIGHT + h, x:x + w], grids[step])
        assert (sheet[:plots.CAPTION_HEIGHT, x:x + w] < 128).any()  # the "step N" caption
        x += w + plots.GAP
    assert sheet.shape[1] == x
    assert plots.samples_over_training(tmp_path / "samples", tmp_path / "over.png", up_to_step=250) == [100, 200]


def _card(folder: Path) -> str:
    hub.write_model_card(folder, context_names=NAMES, resolution=16, dataset="default", settings={"seed": 0},
                         summary={"steps": 300}, license="other")
    return (folder / "README.md").read_text()


def test_the_card_shows_the_figures_it_has_inputs_for_and_survives_a_failed_plot(tmp_path, monkeypatch, caplog):
    assert "loss.png" not in _card(tmp_path) and "samples_over_training" not in _card(tmp_path)
    plots.write_loss_history(tmp_path / "loss_history.csv", [(100, 0.3, 1e-3), (200, 0.2, 1e-3), (300, 0.1, 5e-4)])
    _fake_grids(tmp_path / "samples", range(100, 301, 200))
    card = _card(tmp_path)
    assert card.index("## Training") < card.index("![Training loss](loss.png)") < card.index("### Settings")
    assert "![Samples over training](samples_over_training.png)" in card and "steps 100, 300" in card
    assert all((tmp_path / name).is_file() for name in hub.FIGURES)

    def broken(*args):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "plot_loss", broken)
    with caplog.at_level(logging.WARNING, logger="training.hub"):
        card = _card(tmp_path)
    assert "loss.png" not in card and not (tmp_path / "loss.png").exists() and "samples_over_training.png" in card
    assert "no loss plot: RuntimeError: no fonts today" in caplog.text


# ---- checkpoints: atomic saves, full disks, corruption ---------------------------------------


@pytest.fixture
def accelerator_parts():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net on a busy 2-core machine: extra threads only wait for each other
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    unet = build_unet(2, "tiny")
    ema = EMAModel(unet.parameters(), use_ema_warmup=True, model_cls=UNet2DModel, model_config=unet.config)
    checkpointing.register_ema(accelerator, ema)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    unet, optimizer, scheduler = accelerator.prepare(unet, optimizer, scheduler)
    yield accelerator, unet, optimizer, scheduler, ema
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


def _train_step(unet, optimizer, scheduler, ema):
    loss = unet(torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), class_labels=torch.eye(2)).sample.square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    ema.step(unet.parameters())


def test_checkpoint_round_trip_restores_optimizer_scheduler_and_ema(accelerator_parts, tmp_path):
    accelerator, unet, optimizer, scheduler, ema = accelerator_parts
    for _ in range(3):
        _train_step(unet, optimizer, scheduler, ema)
    saved = {"opt": optimizer.state_dict()["state"][0]["exp_avg"].clone(), "lr": scheduler.get_last_lr(),
             "ema": [p.clone() for p in ema.shadow_params], "ema_step": ema.optimization_step}
    path = checkpointing.save_checkpoint(accelerator, tmp_path, 3)
    assert path.name == "checkpoint-3" and not list(tmp_path.glob(".tmp*"))
    for _ in range(2):
        _train_step(unet, optimizer, scheduler, ema)
    assert checkpointing.load_checkpoint(accelerator, path) == 3
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved["opt"])
    assert scheduler.get_last_lr() == saved["lr"]
    assert ema.optimization_step == saved["ema_step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, saved["ema"], strict=True))


def test_full_disk_keeps_the_last_good_checkpoint(accelerator_parts, tmp_path, monkeypatch):
    accelerator, *_ = accelerator_parts
    good = checkpointing.save_checkpoint(accelerator, tmp_path, 1)
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}

    def disk_full(output_dir):
        Path(output_dir).mkdir()
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoint-2 .*No space left on device.*checkpoint-1, is kept"):
        checkpointing.save_checkpoint(accelerator, tmp_path, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]
    assert before == {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}


def test_final_pipeline_save_never_mixes_old_and_new_files(tmp_path, monkeypatch):
    names = ["a", "b"]
    torch.manual_seed(0)
    old, new = (SpritePipeline(build_unet(2, "tiny"), make_scheduler(), names) for _ in range(2))
    checkpointing.save_pipeline(old, tmp_path)
    (tmp_path / "checkpoint-5").mkdir()
    original = old.save_pretrained

    def killed_mid_save(folder):
        original(folder)
        (Path(folder) / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(new, "save_pretrained", killed_mid_save)
    with pytest.raises(OSError):
        checkpointing.save_pipeline(new, tmp_path)
    kept = load_pipeline(tmp_path).unet.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in old.unet.state_dict().items())
    monkeypatch.undo()
    checkpointing.save_pipeline(new, tmp_path)
    saved = load_pipeline(tmp_path).unet.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in new.unet.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5", "model_index.json", "scheduler", "unet"]


def test_interrupted_and_corrupted_checkpoints_are_never_taken_as_valid(accelerator_parts, tmp_path):
    accelerator, *_ = accelerator_parts
    for step in (1, 2, 3):
        checkpointing.save_checkpoint(accelerator, tmp_path, step, total_limit=2)
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]

    stale = tmp_path / ".tmp-checkpoint-9"  # what a kill during a save leaves behind
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert checkpointing.resolve_resume("latest", tmp_path, with_ema=True).name == "checkpoint-3"
    checkpointing.remove_stale_temporaries(tmp_path)
    assert not stale.exists()

    weights = tmp_path / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checkpoint-3 is corrupted: model.safetensors"):
        checkpointing.resolve_resume("latest", tmp_path, with_ema=True)
    (tmp_path / "checkpoint-2" / "optimizer.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="checkpoint-2 is corrupted"):
        checkpointing.load_checkpoint(accelerator, tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "ema" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="checkpoint-2 is incomplete.*ema/config.json"):
        checkpointing.resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path, with_ema=True)


# ---- bad input -------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "a_file").write_text("")
    (tmp / "not_a_checkpoint").mkdir()
    broken = tmp / "out" / "checkpoint-3"
    (broken / "ema").mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "ema/config.json",
                 "ema/diffusion_pytorch_model.safetensors"):
        (broken / name).write_bytes(b"garbage")
    return [
        (["--dataset", str(tmp / "missing.npy")], "missing.npy: image file not found"),
        (["--model_config", "gigantic"], "--model_config: unknown model preset 'gigantic'"),
        (["--model_config", str(tmp / "unet.json")], "unet.json"),
        (["--output_dir", str(tmp / "a_file" / "out")], f"--output_dir {tmp / 'a_file' / 'out'} is not writable"),
        (["--resume_from_checkpoint", str(tmp / "not_a_checkpoint")], "not_a_checkpoint is not a checkpoint folder"),
        (["--resume_from_checkpoint", str(tmp / "nowhere")], "nowhere: no such checkpoint folder"),
        (["--resume_from_checkpoint", "latest"], "checkpoint-3 is corrupted"),
        (["--context_dropout", "1.5"], "--context_dropout must be between 0 and 1"),
        (["--resolution", "4096"], "--resolution must be from 1 to 128 pixels, got 4096"),
        (["--timestep_bias_portion", "0"], "--timestep_bias_portion must be above 0 and at most 1, got 0"),
        (["--initial_step", "4"], "--initial_step 4 continues --pretrained_model_name_or_path's run"),
        (["--distill_guidance", "1"], "--distill_guidance 1 distils --pretrained_model_name_or_path's guidance"),
        (["--guidance_learning_rate", "0"], "--guidance_learning_rate must be positive, got 0"),
        (["--pretrained_model_name_or_path", "TINY"], "has 5 contexts (hero, non-hero, food, spell, item), the "
                                                      "dataset 3"),
        (["--pretrained_model_name_or_path", "BUNDLED"], "is guidance-distilled (one pass for guidance 1 to 3); "
                                                         "fine-tune or distil the two-pass model it came from"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_bad_input_gives_a_clear_error(case, sprites, tmp_path, capsys, tiny_dir):
    from model.loading import DEFAULT_MODEL_DIR

    flags, message = _bad_inputs(tmp_path)[case]
    flags = [{"TINY": str(tiny_dir), "BUNDLED": str(DEFAULT_MODEL_DIR)}.get(f, f) for f in flags]
    args = tiny_args(sprites, tmp_path / "out", "--max_train_steps", "1") + flags
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---- the recipe ---------------------------------------------------------------------------------
RECIPE_FLAGS = ("dataset", "resolution", "downscale", "model_config", "train_batch_size",
                "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1",
                "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm", "prediction_type", "snr_gamma",
                "context_dropout", "use_ema", "ema_inv_gamma", "ema_power", "ema_max_decay", "seed")


def test_fine_tuning_starts_from_the_given_models_weights(sprites, tmp_path):
    first = tmp_path / "first"
    assert train.main(tiny_args(sprites, first, "--max_train_steps", "1", "--checkpointing_steps", "0",
                                "--save_images_steps", "0")) == 0
    tuned = tmp_path / "tuned"  # another seed: fresh weights would differ everywhere
    assert train.main(tiny_args(sprites, tuned, "--max_train_steps", "1", "--checkpointing_steps", "0",
                                "--save_images_steps", "0", "--seed", "1", "--learning_rate", "1e-12",
                                "--pretrained_model_name_or_path", str(first))) == 0
    start = load_file(first / "unet/diffusion_pytorch_model.safetensors")
    end = load_file(tuned / "unet/diffusion_pytorch_model.safetensors")
    assert start.keys() == end.keys()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    settings = json.loads((tuned / "training_args.json").read_text())
    assert settings["pretrained_model_name_or_path"] == "first"
    assert settings["model_config"] is None  # the preset flag was not used: the card must not name one


def test_fine_tuning_a_bare_label_array_says_the_names_change(tmp_path, tiny_dir, caplog):
    """A course .npy pair has no names, so it gets the course's: fine-tuning a model whose contexts are named
    otherwise (the bundled model's fifth is item, the course's side-facing) relabels them, and the log says so."""
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "sprites_five.npy", np.full((10, 16, 16, 3), 255, np.uint8))
    np.save(data / "sprite_labels_nc_five.npy", np.eye(5, dtype=np.float32)[np.arange(10) % 5])
    flags = ["--dataset", str(data / "sprites_five.npy"), "--model_config", "tiny", "--train_batch_size", "5",
             "--max_train_steps", "1", "--checkpointing_steps", "0", "--save_images_steps", "0", "--logger", "none",
             "--samples_per_context", "1", "--sample_steps", "2", "--pretrained_model_name_or_path", str(tiny_dir)]
    with caplog.at_level(logging.INFO, logger=train.__name__):
        assert train.main([*flags, "--output_dir", str(tmp_path / "bare")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "contexts are" in
              r.getMessage()]
    assert len(warned) == 1
    assert "hero, non-hero, food, spell, item; the fine-tuned model names them hero, non-hero, food, spell, " \
           "side-facing" in warned[0] and "--context_names" in warned[0]
    assert load_pipeline(tmp_path / "bare").context_names[-1] == "side-facing"

    caplog.clear()  # named on the command line: the model keeps the given names, and nothing is flagged
    with caplog.at_level(logging.INFO, logger=train.__name__):
        assert train.main([*flags, "--output_dir", str(tmp_path / "named"), "--context_names",
                           "hero,non-hero,food,spell,item"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "contexts are" in r.getMessage()]
    assert load_pipeline(tmp_path / "named").context_names == load_pipeline(tiny_dir).context_names


def test_guidance_distillation_fits_the_teachers_two_pass_guidance(sprites, tmp_path, fresh_accelerator_state):
    """--distill_guidance: the student, one pass, moves towards the teacher's guided prediction at every scale."""
    flags = ["--checkpointing_steps", "0", "--save_images_steps", "0"]
    assert train.main(tiny_args(sprites, tmp_path / "teacher", "--max_train_steps", "20", *flags)) == 0
    out = tmp_path / "student"
    assert train.main(tiny_args(sprites, out, "--max_train_steps", "100", "--distill_guidance", "3", "--no-use_ema",
                                "--learning_rate", "1e-4",
                                "--pretrained_model_name_or_path", str(tmp_path / "teacher"), *flags)) == 0
    teacher, student = load_pipeline(tmp_path / "teacher").unet, load_pipeline(out)
    assert student.guidance_knots == [1, 2, 3] and student.unet.config.num_class_embeds == 3 + 3
    generator = torch.Generator().manual_seed(0)  # a fixed batch of noisy training sprites
    clean = torch.from_numpy(np.load(sprites)[:24]).permute(0, 3, 1, 2).float() / 127.5 - 1
    timestep = torch.linspace(10, 490, 24)
    alpha_bar = make_scheduler().alphas_cumprod[timestep.long()].reshape(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * torch.randn(clean.shape, generator=generator)
    context, scale = torch.eye(3)[torch.arange(24) % 3], torch.linspace(1, 3, 24)
    with torch.no_grad():
        target = train.guided_target(teacher, noisy, timestep, context, scale)
        rows = student.with_guidance(context, scale)
        start = with_guidance_rows(teacher, 3)(noisy, timestep, class_labels=rows).sample  # the teacher's cond
        end = student.unet(noisy, timestep, class_labels=rows).sample
    assert F.mse_loss(end, target) < 0.75 * F.mse_loss(start, target)  # measured: 0.65 of it after 100 steps
    table, teacher_table = student.unet.class_embedding.weight, teacher.class_embedding.weight
    assert torch.equal(table[:3], teacher_table)  # the contexts' rows stay the teacher's
    # the guidance rows, from zero, at --guidance_learning_rate: Adam moves each entry about a learning rate per step,
    # so at the network's 1e-4 no row could get past 100 steps x 1e-4 x sqrt(width) (measured: 9x that)
    assert table[3:].norm(dim=1).max() > 3 * 100 * 1e-4 * table.shape[1] ** 0.5


@pytest.mark.slow
def test_max_train_minutes_stops_early_and_still_saves_the_model(sprites, tmp_path):
    out = tmp_path / "boxed"
    args = tiny_args(sprites, out, "--max_train_steps", "50", "--max_train_minutes", "0.0001",
                     "--checkpointing_steps", "0", "--save_images_steps", "0")
    result = run([sys.executable, TRAIN, *args], clean_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--max_train_minutes 0.0001 reached at step 1 of 50" in result.stderr
    assert all((out / name).is_file() for name in PIPELINE_FILES)
    assert "| steps | 1 |" in (out / "README.md").read_text()


def test_the_defaults_are_the_teachers_recipe():
    """`accelerate launch training/train.py` with no flags trains the teacher's architecture and recipe: the
    two-pass model (model/teacher) that the bundled model was distilled from, in a second run (--distill_guidance).

    The teacher's own flags are model/teacher/training_args.json. Its run also had a time box
    (--max_train_minutes 3 on one H200, which stopped it at step 4,750 of the 6,000 the cosine schedule
    spans): a time box is about the machine, not the recipe, so it is not a default.
    """
    from model.loading import TEACHER_MODEL_DIR
    from training.options import parse_args
    from training.sprite_data import default_sprites

    defaults = vars(parse_args([]))
    shipped = json.loads((TEACHER_MODEL_DIR / "training_args.json").read_text())
    assert {k: defaults[k] for k in RECIPE_FLAGS} == {k: shipped[k] for k in RECIPE_FLAGS}
    # The budget is in epochs now; on the bundled sprites it is the bundled run's 6,000 planned steps.
    steps_per_epoch = math.ceil(len(default_sprites()[0]) / defaults["train_batch_size"])
    assert defaults["max_train_steps"] == 0 and defaults["num_epochs"] * steps_per_epoch == shipped["max_train_steps"]
    built = build_unet(5, defaults["model_config"], defaults["resolution"]).config
    bundled = json.loads((TEACHER_MODEL_DIR / "unet" / "config.json").read_text())
    architecture = ("block_out_channels", "layers_per_block", "norm_num_groups", "down_block_types",
                    "up_block_types", "add_attention", "sample_size", "num_class_embeds", "in_channels")
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in built.items() if k in architecture} == \
        {k: bundled[k] for k in architecture}


@pytest.mark.slow
def test_training_learns_the_data(sprites):
    """200 steps of train.py's batch and loss on 32 coloured squares: the loss falls well below where it starts,
    and sprites drawn afterwards sit closer to the training sprites than those of the untrained network."""
    from training.sprite_data import load_dataset

    torch.manual_seed(0)
    data = load_dataset(str(sprites), context_names=NAMES)
    schedule = NoiseSchedule(make_scheduler())
    unet = build_unet(len(NAMES), "tiny")
    pipe = SpritePipeline(unet, make_scheduler(), NAMES)
    pipe.set_progress_bar_config(disable=True)
    contexts = torch.eye(len(NAMES))[[0, 1, 2] * 4]

    def distance_to_data() -> float:
        drawn = torch.from_numpy(pipe(contexts, num_images=12, num_inference_steps=20, sampler="ddim",
                                      seed=1).array).float()
        real = ((data.images.permute(0, 2, 3, 1) + 1) * 127.5).flatten(1)
        return float(torch.cdist(drawn.flatten(1), real).min(1).values.mean())

    before = distance_to_data()
    optimizer = train.adamw(unet.parameters(), lr=2e-3)
    losses = []
    unet.train()
    for _ in range(200):
        idx = torch.randint(0, len(data), (16,))
        noisy, t, context, noise, x0 = train.noisy_batch(data.images[idx], data.contexts[idx], schedule, 0.1, True)
        loss = train.diffusion_loss(unet(noisy, t - 1, class_labels=context).sample, x0, noise, t, schedule)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    start, end = np.mean(losses[:10]), np.mean(losses[-20:])
    assert end < 0.5 * start, (start, end)
    assert distance_to_data() < 0.85 * before  # 0.73 here after 200 steps
