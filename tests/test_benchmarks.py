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
