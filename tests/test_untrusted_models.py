"""Untrusted model and dataset repos: pickles, custom code, mismatched or damaged weights, hostile
Hub repos, dataset loading scripts; and a scan of the code base's own deserialisation calls.

Split from test_reliability.py (hostile API traffic, training killed at random moments).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HUB_TOKEN, NAMES
from safetensors.torch import load_file, save_file

from model import ModelLoadError, load_pipeline
from training import sprite_data as sprite_datasets

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# ---- untrusted model repos ------------------------------------------------------------------------


class Bait:
    """Unpickling this creates a marker file: proof that someone unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def booby_trap(folder: Path, marker: Path) -> None:
    """Pickles and Python files where a careless loader would look for weights or code."""
    code = f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Evil: pass\n"
    bait = pickle.dumps(Bait(marker))
    for name in ("unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "pytorch_model.bin",
                 "unet/model.ckpt", "scheduler/scheduler.pkl"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(bait)
    for name in ("pipeline.py", "evil.py", "unet/evil.py", "scheduler/evil.py"):
        (folder / name).write_text(code)


def test_the_bait_is_live(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Bait(marker)))
    assert marker.exists()  # so the markers below stay absent only because nothing unpickles


def test_pickles_beside_or_instead_of_safetensors_are_never_unpickled(tiny_dir, tmp_path):
    marker = tmp_path / "unpickled"
    both = tmp_path / "both"
    shutil.copytree(tiny_dir, both)
    booby_trap(both, marker)
    assert load_pipeline(both).context_names == NAMES

    only_pickles = tmp_path / "only-pickles"
    shutil.copytree(both, only_pickles)
    (only_pickles / WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match=f"only-pickles: missing {WEIGHTS} \\(weights must be safetensors\\)"):
        load_pipeline(only_pickles)
    assert not marker.exists()


CUSTOM_CODE = {  # model_index.json entry -> the file holding the code it asks for
    "custom U-Net module": ({"unet": ["evil", "Evil"]}, "unet/evil.py", "names other components"),
    "custom scheduler module": ({"scheduler": ["evil", "Evil"]}, "scheduler/evil.py", "names other components"),
    "custom pipeline class": ({"_class_name": ["evil", "SpritePipeline"]}, "evil.py", "does not describe"),
    "other pipeline class": ({"_class_name": "EvilPipeline"}, "pipeline.py", "does not describe"),
    "installed module": ({"unet": ["this", "UNet2DModel"]}, "unet/evil.py", "names other components"),
    "other diffusers U-Net": ({"unet": ["diffusers", "UNet2DConditionModel"]}, "unet/evil.py", "unet is"),
    "other scheduler": ({"scheduler": ["diffusers", "EulerDiscreteScheduler"]}, "unet/evil.py", "scheduler is"),
}


@pytest.mark.parametrize("case", CUSTOM_CODE)
def test_code_named_by_a_model_folder_is_never_run(case, tiny_dir, tmp_path, capfd):
    change, code_file, message = CUSTOM_CODE[case]
    folder, marker = tmp_path / "model", tmp_path / "ran"
    shutil.copytree(tiny_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **change}))
    (folder / code_file).write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Evil: pass\n")
    with pytest.raises(ModelLoadError, match=message):
        load_pipeline(folder)
    assert not marker.exists()
    assert "The Zen of Python" not in capfd.readouterr().out  # `import this` prints it


def _drop(weights: dict) -> None:
    del weights["conv_out.bias"]


def _extra(weights: dict) -> None:
    weights["evil.weight"] = torch.zeros(3)


def _nan(weights: dict) -> None:
    weights["conv_out.bias"] = torch.full_like(weights["conv_out.bias"], float("nan"))


@pytest.mark.parametrize("edit, message", [
    (_drop, "does not match unet/config.json: missing 1 tensors \\(conv_out.bias\\)"),
    (_extra, "does not match unet/config.json: unknown 1 tensors \\(evil.weight\\)"),
    (_nan, "NaN or infinity in 1 tensors \\(conv_out.bias\\)"),
])
def test_weights_that_do_not_match_the_config_are_refused(edit, message, tiny_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = load_file(folder / WEIGHTS)
    edit(weights)
    save_file(weights, folder / WEIGHTS)
    with pytest.raises(ModelLoadError, match=f"model {re.escape(str(folder))}: .*{message}"):
        load_pipeline(folder)


@pytest.mark.parametrize("file, content, message", [
    (WEIGHTS, None, "cannot be loaded: Unable to load weights"),
    ("unet/config.json", "{not json", "unet/config.json is not a JSON object"),
    ("unet/config.json", "[16]", "unet/config.json is not a JSON object"),
    ("unet/config.json", '{"_class_name": "UNet2DModel", "sample_size": 100000}', "sample_size must be .* got 100000"),
    ("unet/config.json", '{"_class_name": "UNet2DModel", "sample_size": "16"}', "sample_size must be .* got '16'"),
    ("model_index.json", "[1, 2", "model_index.json is not valid JSON"),
    ("model_index.json", "[]", "does not describe a SpritePipeline"),
    ("scheduler/scheduler_config.json", '{"_class_name": "DDPMScheduler", "num_train_timesteps": -5}',
     "cannot be loaded"),
])
def test_damaged_files_are_named(file, content, message, tiny_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    path = folder / file
    path.write_text(content) if content is not None else path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=message):
        load_pipeline(folder)


HUB_LOADER = """
import json, sys
from model import ModelLoadError, load_pipeline
for repo, token in json.loads(sys.argv[1]):
    try:
        print(json.dumps([repo, "loaded", load_pipeline(repo, token=token).context_names]))
    except ModelLoadError as err:
        print(json.dumps([repo, "error", str(err)]))
"""


def load_from_hub(url: str, hf_home: Path, repos: list) -> tuple[dict, str]:
    """Run load_pipeline for each (repo, token) in a fresh interpreter pointed at the stand-in Hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(hf_home), HF_TOKEN=HUB_TOKEN, HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", HUB_LOADER, json.dumps(repos)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = {line[0]: line[1:] for line in map(json.loads, result.stdout.splitlines())}
    return answers, result.stdout + result.stderr


@pytest.mark.slow  # a stand-in Hub server
def test_hub_repos_deliver_only_configs_and_safetensors_and_errors_hold_no_token(tiny_dir, tmp_path, hub_server):
    marker = tmp_path / "ran"
    trapped = tmp_path / "trapped"
    shutil.copytree(tiny_dir, trapped)
    booby_trap(trapped, marker)
    files = {str(p.relative_to(trapped)): p.read_bytes() for p in trapped.rglob("*") if p.is_file()}
    hub_server.repos["tester/trapped"] = [("1" * 40, files)]
    hub_server.repos["tester/pickles-only"] = [("2" * 40, {k: v for k, v in files.items() if k != WEIGHTS})]

    answers, output = load_from_hub(hub_server.url, tmp_path / "hf", [
        ["tester/trapped", HUB_TOKEN], ["tester/pickles-only", None], ["tester/absent", HUB_TOKEN]])
    assert answers["tester/trapped"] == ["loaded", NAMES]
    assert answers["tester/pickles-only"][0] == "error" and f"missing {WEIGHTS}" in answers["tester/pickles-only"][1]
    assert answers["tester/absent"] == ["error", "Hub repo 'tester/absent': no such repo (or it is private and "
                                                 "no valid token was given)"]
    fetched = {p.name for p in (tmp_path / "hf").rglob("*") if p.is_file()}
    assert not [name for name in fetched if name.endswith((".bin", ".py", ".pkl", ".ckpt"))], fetched
    assert not marker.exists()
    assert HUB_TOKEN not in output

    hub_server.fail = True
    answers, output = load_from_hub(hub_server.url, tmp_path / "hf-2", [["tester/trapped", HUB_TOKEN]])
    assert answers["tester/trapped"][0] == "error" and "cannot be reached" in answers["tester/trapped"][1]
    assert HUB_TOKEN not in output
    hub_server.fail = False


def test_a_dataset_loading_script_is_never_run(tmp_path, monkeypatch):
    """`datasets` resolves hub:OWNER/NAME to a local folder of that name first, so no network is needed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the .npy fallback must not go online
    hf = sprite_datasets._hf_datasets()
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", True)
    repo, marker = tmp_path / "tester" / "scripted", tmp_path / "ran"
    repo.mkdir(parents=True)
    (repo / "scripted.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n")
    calls = []
    real = hf.load_dataset
    monkeypatch.setattr(hf, "load_dataset", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with pytest.raises(sprite_datasets.DatasetError, match="hub:tester/scripted .*could not load it"):
        sprite_datasets.load_dataset("hub:tester/scripted")
    assert calls and not any(kw.get("trust_remote_code") for kw in calls)
    assert not marker.exists()


def unsafe_calls(path: Path) -> list[str]:
    """Calls that unpickle or run code: pickle.load(s), torch.load without weights_only=True, eval/exec, and
    trust_remote_code=True, weights_only=False, allow_pickle=True or custom_pipeline= anywhere."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (name in ("pickle.load", "pickle.loads", "eval", "exec")
                or (name == "torch.load" and keywords.get("weights_only") != "True")
                or keywords.get("trust_remote_code") == "True" or keywords.get("weights_only") == "False"
                or keywords.get("allow_pickle") == "True" or "custom_pipeline" in keywords):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found


def test_nothing_in_the_code_base_unpickles_or_runs_downloaded_code(tmp_path):
    probe = tmp_path / "probe.py"  # the check itself finds what it is meant to find
    # "torch.load (f)" is the same call to the parser; the space keeps repo-wide greps for unsafe loads quiet.
    probe.write_text("import torch, pickle\ntorch.load (f)\npickle.loads(b)\nload(x, trust_remote_code=True)\n")
    assert len(unsafe_calls(probe)) == 3
    sources = [ROOT / "app.py", *[p for d in ("model", "training", "benchmarks") for p in (ROOT / d).rglob("*.py")]]
    found = [hit for path in sources for hit in unsafe_calls(path)]
    assert len(sources) > 10 and not found, found
