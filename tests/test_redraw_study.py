"""studies/redraw_study.py at tiny size: a random tiny U-Net and an untrained judge on random sprites."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from model import SpritePipeline, build_unet, make_scheduler
from studies import redraw_study
from training.judge import Judge, judge_outputs

NAMES = ["hero", "non-hero", "food", "spell", "item"]
PER_CONTEXT = 6  # sprites per context; every other one is held out, so 3 held-out heroes


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


@pytest.fixture(scope="module")
def evaluator():
    """Stands in for training.evaluate.Evaluator: what the study reads of it."""
    torch.manual_seed(0)
    count = PER_CONTEXT * len(NAMES)
    return SimpleNamespace(real=np.random.default_rng(0).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8),
                           labels=np.repeat(np.arange(len(NAMES)), PER_CONTEXT), names=NAMES,
                           heldout_idx=np.arange(0, count, 2), judge=Judge(len(NAMES)).eval(),
                           heldout_accuracy=dict.fromkeys(NAMES, 0.5))


def test_main_writes_every_figure_the_tables_and_the_strips(pipe, evaluator, tmp_path, monkeypatch):
    monkeypatch.setattr(redraw_study, "load_pipeline", lambda model: pipe)
    monkeypatch.setattr(redraw_study, "Evaluator", lambda *args, **kwargs: evaluator)
    redraw_study.main(["--num_sprites", "5", "--steps", "4", "--faithful_strengths", "0", "0.5",
                       "--transfer_strengths", "0.5", "1", "--strip_strengths", "0", "0.6", "1",
                       "--strip_variations", "2", "--out_dir", str(tmp_path)])
    results = json.loads((tmp_path / "redraw_study.json").read_text())
    assert {"command", "settings", "machine", "distance_unit", "faithfulness", "transfer", "strips",
            "seconds"} <= set(results)
    assert results["settings"]["steps"] == 4 and results["machine"]["cpu"]
    assert "--num_sprites 5" in results["command"]

    faithful = results["faithfulness"]
    assert len(faithful["sprites"]) == len(NAMES)  # 5 // 5 contexts: one of each, all held out
    assert set(faithful["sprites"]) <= set(evaluator.heldout_idx)
    assert sorted(evaluator.labels[faithful["sprites"]]) == list(range(len(NAMES)))
    zero, half = faithful["rows"]
    assert (zero["strength"], zero["steps_run"], zero["mean_distance"], zero["median_distance"]) == (0, 0, 0, 0)
    assert (half["t0"], half["steps_run"]) == (250, 2) and half["mean_distance"] > 0

    moved = results["transfer"]
    assert [r["strength"] for r in moved["rows"]] == [0, 0.5, 1]
    assert [r["steps_run"] for r in moved["rows"]] == [0, 2, 4]
    assert moved["from_training_split"] == 2  # 3 held-out heroes, topped up from the other 3
    assert len(moved["sprites"]) == 5 and set(evaluator.labels[moved["sprites"]]) == {0}
    assert set(moved["sprites"][:3]) <= set(evaluator.heldout_idx)
    verdict = judge_outputs(evaluator.judge, evaluator.real[moved["sprites"]])[0]
    assert moved["rows"][0]["judged_target"] == pytest.approx(np.mean(verdict == NAMES.index("food")))
    assert moved["rows"][0]["mean_distance"] == 0
    assert all(0 <= r["judged_target"] <= 1 and 0 <= r["judged_source"] <= 1 for r in moved["rows"])

    scale, cell = redraw_study.STRIP_SCALE, 16 + 1  # a sprite and its gap
    with Image.open(tmp_path / "redraw_strip.png") as strip:  # 3 strengths x 2 variations
        assert strip.size == ((3 * cell + 1) * scale, redraw_study.HEADER_PX + (2 * cell + 1) * scale)
        first = np.asarray(strip.convert("RGB"))[redraw_study.HEADER_PX + scale:][::scale, ::scale][:16, 1:17]
        assert np.array_equal(first, evaluator.real[results["strips"]["sprite"]])  # strength 0: the input
    with Image.open(tmp_path / "repaint_strip.png") as strip:  # input, mask, 2 variations; 2 rows
        assert strip.size == (redraw_study.ROW_LABEL_PX + (4 * cell + 1) * scale,
                              redraw_study.HEADER_PX + (2 * cell + 1) * scale)
    table = (tmp_path / "redraw_study.md").read_text()
    assert "| 0.5 | 250 | 2 |" in table and "2 of them from the judge's training split" in table


def test_a_model_with_other_contexts_is_refused(evaluator, tmp_path):
    other = SpritePipeline(build_unet(2, "tiny"), make_scheduler(), ["a", "b"])
    with pytest.raises(ValueError, match="are not the judge's"):
        redraw_study.run_study(other, evaluator, redraw_study.Settings(), tmp_path)
