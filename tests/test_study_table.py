"""The architecture study's table joins each preset's evaluation with its measured cost."""

import json

import pytest

from studies.study_table import main, study_table


def _result(sampler: str, accuracy: dict[str, float], ratio: float, guidance: float = 2.0) -> dict:
    return {"sampler": sampler, "steps": 500 if sampler == "ddpm" else 50, "guidance_scale": guidance,
            "context_accuracy": sum(accuracy.values()) / len(accuracy), "context_accuracy_per_context": accuracy,
            "frechet_ratio": ratio, "memorisation_rate": 0.002}


def _cost(preset: str, parameters: int, attention: bool = True) -> dict:
    return {"preset": preset, "channels": "32-64-64", "attention": attention, "parameters": parameters,
            "ms_per_step": 10.0, "ms_per_step_guided": 16.0}


@pytest.fixture
def study(tmp_path):
    evaluations = {
        "big": [_result("ddim", {"hero": 0.9, "food": 0.6}, 4.0), _result("ddpm", {"hero": 1.0, "food": 0.8}, 3.0)],
        "little": [_result("ddim", {"hero": 0.7, "food": 0.8}, 9.0), _result("ddpm", {"hero": 0.5, "food": 0.9}, 5.0)],
    }
    for preset, results in evaluations.items():
        (tmp_path / preset).mkdir()
        (tmp_path / preset / "eval.json").write_text(json.dumps(results))
    costs = {"presets": [_cost("big", 3_000_000), _cost("little", 300_000, attention=False)]}
    (tmp_path / "cost.json").write_text(json.dumps(costs))
    return tmp_path


def test_rows_are_ordered_by_size_and_name_the_weakest_context(study, capsys):
    main([str(study)])
    lines = capsys.readouterr().out.splitlines()
    assert "DDIM 50 g2: accuracy" in lines[0] and "DDPM 500 g2: FD ratio" in lines[0]
    little, big = lines[2], lines[3]
    assert little.startswith("| little | 32-64-64 | no | 0.30M | 10.0 | 8.0 | 0.750 | 0.70 (hero) | 9.0x")
    assert "| 0.700 | 0.50 (hero) | 5.0x | 0.2% |" in little
    assert big.startswith("| big |") and "| 0.900 | 0.80 (food) | 3.0x |" in big


def test_presets_evaluated_differently_or_without_a_cost_are_refused(study, capsys):
    (study / "third").mkdir()
    (study / "third" / "eval.json").write_text(json.dumps([_result("ddim", {"hero": 1.0}, 1.0)]))
    with pytest.raises(SystemExit):
        main([str(study)])
    assert "no cost measured for third" in capsys.readouterr().err
    evaluations = {"a": [_result("ddim", {"hero": 1.0}, 1.0)], "b": [_result("ddpm", {"hero": 1.0}, 1.0)]}
    with pytest.raises(ValueError, match="other runs"):
        study_table(evaluations, {"a": _cost("a", 1), "b": _cost("b", 2)})
