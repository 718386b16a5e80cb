"""The quality study's arms and the commands it launches (the study itself runs on a GPU: benchmarks/gpu.sh)."""

import argparse
from pathlib import Path

import pytest

from studies import quality_study


def command_for(name: str, steps: int) -> list[str]:
    arms, _ = quality_study.all_arms()
    args = argparse.Namespace(steps=steps, config=Path("training/configs/gpu_bf16.yaml"), out=Path("runs/study"),
                              max_train_minutes=6.5)
    return quality_study.train_command(name, arms[name], args)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def last_flag(command: list[str], name: str) -> str:
    return command[len(command) - 1 - command[::-1].index(name) + 1]


@pytest.mark.skipif(not quality_study.SECOND_SET.is_file(), reason="the second dataset is not built here")
def test_the_short_second_set_arm_gets_a_budget_sized_for_760_sprites():
    command = command_for("nethack-medium1-g16-short", 10_000)  # gpu.sh's "long" part
    assert flag(command, "--max_train_steps") == "2000"
    assert flag(command, "--dataset").endswith("sprites_nethack.npy")
    assert flag(command, "--context_names") == "monster,weapon,item,effect"
    assert flag(command, "--max_train_minutes") == "6.5"
    assert flag(command_for("nethack-medium1-g16", 10_000), "--max_train_steps") == "10000"


def test_the_gpu_script_names_arms_that_exist(capsys):
    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh").read_text()
    arms, extra = quality_study.all_arms()
    for part in ("long", "batch"):
        named = script.split(f"{part})")[1].split(";;")[0].split("--arms")[1].split("--steps")[0].split()
        assert named and set(named) <= set(arms), part
    assert {"nethack-medium1-g16-short", "medium1-g16-b64"} <= extra  # a default study run leaves them out
    b64 = command_for("medium1-g16-b64", 6_000)  # gpu.sh's "batch" part: the recipe's images, 64 at a time
    assert (flag(b64, "--max_train_steps"), last_flag(b64, "--train_batch_size"), last_flag(b64, "--learning_rate")) \
        == ("24000", "64", "5e-4")  # argparse takes the last: the arm's flags override the shared recipe's
    assert flag(command_for("medium1-g16", 10_000), "--max_train_steps") == "10000"
    with pytest.raises(SystemExit):  # an unknown arm is refused before anything trains
        quality_study.main(["--arms", "no-such-arm", "--out", "/nonexistent/never-made"])
    assert "unknown arm" in capsys.readouterr().err
