"""The benchmark scripts that do more than time things still work end to end (at toy sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes, servers, compiles or a browser: pytest -m 'not slow' skips it

ROOT = Path(__file__).resolve().parents[1]


def test_time_to_quality_trains_then_evaluates_each_checkpoint_in_order(tmp_path):
    out = tmp_path / "ttq"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "benchmarks/time_to_quality.py", "--preset", "tiny", "--batch", "16", "--max_steps", "20",
           "--every", "10", "--num_per_context", "2", "--runs", "ddim:4", "--output", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "time_to_quality.json").read_text())
    # 20 steps of a tiny model cannot draw sprites: both checkpoints are evaluated and both miss the bar.
    assert [row["step"] for row in rows] == [10, 20]
    assert all(row["failures"] and row["results"][0]["num_per_context"] == 2 for row in rows)
    assert 0 < rows[0]["minutes"] <= rows[1]["minutes"]
    assert "time to quality: not reached within 20 steps" in done.stdout
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already has checkpoints" in again.stderr


def test_load_report_leaves_each_users_first_request_out_of_the_steady_state_row():
    from benchmarks.load_test import Results, markdown

    # two users: their first requests met the opening burst (10 s), their later ones did not (1-2 s)
    runs = [Results(mode="batched", machine="m", model="x", users=2, request="r", sprite_steps=80, wall_s=40.0,
                    completed=[12.0, 11.0, 3.0, 2.0, 3.0], first_frame=[10.0, 10.0, 1.0, 2.0, 1.0],
                    repeat=[False, False, True, True, True], sampling=[1.0] * 5)]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in markdown(runs).splitlines()
            if line.startswith("| ") and " | " in line}
    assert rows["Time to the first streamed frame"].startswith("p50 2.00 s, p95 10.00 s")
    assert rows["The same, leaving out each user's first request (all users arrive at once)"].startswith(
        "p50 1.00 s, p95 1.90 s (3 requests)")
    assert rows["Throughput, sprites x steps per second"].startswith("10")


def test_sampling_benchmark_refuses_a_distilled_baseline_in_one_line(tmp_path):
    """The baseline is the course's two-pass loop; the bundled model is distilled, so it is never the default."""
    import torch

    from model import SpritePipeline, build_unet, make_scheduler
    from model.unet import with_guidance_rows

    names = ["hero", "non-hero", "food", "spell", "item"]
    torch.manual_seed(0)
    SpritePipeline(with_guidance_rows(build_unet(len(names), "tiny"), 3), make_scheduler(), names,
                   guidance_knots=[1.0, 2.0, 3.0]).save_pretrained(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/sampling.py", "--today", str(tmp_path), "--batches", "1",
                           "--runs", "ddim:2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: --today {tmp_path} is guidance-distilled; the baseline "
                                                   "needs a two-pass model")
