"""SpritePipeline: contexts, bad input, saving and loading (local folder and offline Hub cache)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from model import MAX_IMAGES, ModelLoadError, SpritePipeline, build_unet, load_pipeline, make_scheduler
from model.unet import describe_unet

NAMES = ["hero", "non-hero", "food", "spell", "item"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return folder


def test_mixed_context_is_weighted_sum_of_one_hot_embeddings(pipe):
    table = pipe.unet.class_embedding
    one_hot = torch.eye(len(NAMES))
    weights = torch.tensor([[1.0, 0.0, 0.6, 0.0, 0.0]])
    expected = table(one_hot[0:1]) + 0.6 * table(one_hot[2:3])
    assert torch.allclose(table(weights), expected, atol=1e-6)
    assert torch.equal(table(one_hot[3:4]), table.weight[3:4]), "one-hot picks one row"
    assert torch.equal(table(torch.zeros(1, len(NAMES))), torch.zeros(1, table.embedding_dim))
    assert torch.equal(table(torch.tensor([2])), table.weight[2:3]), "integer labels still work"


def test_zero_context_adds_nothing_to_the_time_embedding(pipe):
    x, t = torch.randn(2, 3, 16, 16), torch.tensor(99)
    with torch.no_grad():
        unconditional = pipe.unet(x, t, class_labels=torch.zeros(2, len(NAMES))).sample
        saved_weight = pipe.unet.class_embedding.weight.data.clone()
        pipe.unet.class_embedding.weight.data.zero_()  # no context information at all
        no_embedding = pipe.unet(x, t, class_labels=torch.ones(2, len(NAMES))).sample
        pipe.unet.class_embedding.weight.data.copy_(saved_weight)
    assert torch.equal(unconditional, no_embedding)



@pytest.mark.parametrize("preset", ["tiny", "small-noattn", "medium1-g16"])
def test_the_about_tabs_unet_table_is_the_networks_own(preset):
    unet = build_unet(5, preset)
    seen = {}  # what a real forward pass hands on, stage by stage

    def record(name):
        def hook(_module, _inputs, out):
            seen[name] = " x ".join(map(str, (out[0] if isinstance(out, tuple) else out).shape[1:]))
        return hook

    for name, module in [("input convolution", unet.conv_in), ("down 1", unet.down_blocks[0]),
                         ("middle", unet.mid_block), ("output convolution", unet.conv_out)]:
        module.register_forward_hook(record(name))
    unet(torch.zeros(1, 3, 16, 16), torch.tensor([7]), class_labels=torch.eye(5)[:1])
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in describe_unet(unet).splitlines()[2:]]
    rows = {row[0]: row for row in cells}
    assert seen and all(rows[name][2] == shape for name, shape in seen.items()), (seen, rows)
    total = sum(p.numel() for p in unet.parameters())
    counts = [int(row[3].replace(",", "")) for name, row in rows.items() if name != "**total**"]
    assert sum(counts) == total and rows["**total**"][3] == f"**{total:,}**"  # every weight, once
    attention = unet.config.add_attention
    assert ("self-attention" in rows["middle"][1]) == attention and ("self-attention" in rows["down 3"][1]) == attention
    assert "skip connections" in rows["up 1"][1] and "skip connections" not in rows["down 1"][1]
    assert all(p.device.type == "cpu" for p in unet.parameters())  # the table's pass ran on a copy

def test_context_forms(pipe):
    assert pipe.context_vector("food", 2).tolist() == [[0, 0, 1, 0, 0]] * 2
    assert pipe.context_vector(["hero", "spell"], 1).tolist() == [[1, 0, 0, 1, 0]]
    assert pipe.context_vector([1, 0, 0.6, 0, 0], 1).tolist()[0] == pytest.approx([1, 0, 0.6, 0, 0])
    assert pipe.context_vector(None, 3).abs().sum() == 0
    rows = np.eye(5)[[0, 4]]
    assert pipe.context_vector(rows, 2).tolist() == rows.tolist()


def test_output_images(pipe):
    out = pipe([1, 0, 0.6, 0, 0], num_images=3, num_inference_steps=5, sampler="ddim", guidance_scale=2.0, seed=0)
    assert out.array.shape == (3, 16, 16, 3) and out.array.dtype == np.uint8
    assert len(out.images) == 3 and out.images[0].size == (16, 16) and out.images[0].mode == "RGB"
    assert np.array_equal(np.asarray(out.images[1]), out.array[1])


def test_guidance_one_is_plain_conditional_and_other_values_differ(pipe):
    base = pipe("hero", num_images=2, num_inference_steps=10, seed=1).array
    assert np.array_equal(base, pipe("hero", num_images=2, num_inference_steps=10, seed=1, guidance_scale=1.0).array)
    assert not np.array_equal(base, pipe("hero", num_images=2, num_inference_steps=10, seed=1,
                                         guidance_scale=3.0).array)


def test_callback_sees_every_step(pipe):
    seen = []
    pipe("hero", num_images=1, num_inference_steps=7, seed=0,
         callback=lambda i, t, x, x0: seen.append((i, t, tuple(x.shape), tuple(x0.shape))))
    assert [s[0] for s in seen] == list(range(7))
    assert seen[0][1] == 500 and seen[-1][1] == 500 // 7
    assert seen[0][2] == seen[0][3] == (1, 3, 16, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "num_inference_steps must be a whole number from 1 to 500"),
    ({"num_inference_steps": 501}, "num_inference_steps must be a whole number from 1 to 500"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number"),
    ({"context": "dragon"}, "unknown context 'dragon'; this model knows: hero, non-hero, food, spell, item"),
    ({"context": ["hero", "dragon"]}, "unknown context 'dragon'"),
    ({"context": [1, 0, 0]}, "context weight vector must have 5 entries"),
    ({"context": [1, 0, float("nan"), 0, 0]}, "must be finite numbers"),
    ({"context": [1, 0, math.inf, 0, 0]}, "must be finite numbers"),
    ({"context": [1, 0, -0.5, 0, 0]}, "must not be negative"),
    ({"context": [{"a": 1}]}, "context must be a name, a list of names or a list of 5 numbers"),
    ({"num_images": 0}, f"num_images must be a whole number from 1 to {MAX_IMAGES}"),
    ({"num_images": MAX_IMAGES + 1}, f"num_images must be a whole number from 1 to {MAX_IMAGES}"),
    ({"sampler": "euler"}, "unknown sampler 'euler'; known samplers: ddpm, ddim, dpm++2m, dpm++2m-sde, unipc, euler-a"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a number from 0 to 20"),
    ({"noise_scale": -1.0}, "noise_scale must be a number from 0 to 20"),
])
def test_bad_input_has_clear_message(pipe, kwargs, message):
    args = {"context": "hero", "num_images": 1, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError) as err:
        pipe(**args)
    assert message in str(err.value)


def test_save_then_load_gives_identical_sprites(pipe, saved):
    assert (saved / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((saved / "model_index.json").read_text())["context_names"] == NAMES
    scheduler_config = json.loads((saved / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["num_train_timesteps"] == 500 and len(scheduler_config["trained_betas"]) == 500
    loaded = load_pipeline(saved)
    assert loaded.context_names == NAMES
    for sampler in ("ddpm", "ddim"):
        a = pipe("spell", num_images=2, num_inference_steps=20, sampler=sampler, seed=4).array
        b = loaded("spell", num_images=2, num_inference_steps=20, sampler=sampler, seed=4).array
        assert np.array_equal(a, b)
    plain = UNet2DModel.from_pretrained(saved, subfolder="unet")  # stock diffusers can read it
    assert plain.config.num_class_embeds == len(NAMES)


def test_missing_folder_and_files(saved, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing unet/diffusion_pytorch_model.safetensors"):
        load_pipeline(broken)


def test_a_mistyped_relative_folder_is_named_as_one(saved, tmp_path, monkeypatch):
    """runs/sprits looks like a Hub id (user/name); when runs/ is a folder here, the error says it is not a local
    folder either and lists what runs/ holds, rather than only that the Hub cannot be reached."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    shutil.copytree(saved, tmp_path / "runs" / "sprites")
    with pytest.raises(ModelLoadError, match="It is not a local folder either: runs/ holds sprites"):
        load_pipeline("runs/sprits")
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("someone/sprites")  # no folder someone/ here: a Hub id, no hint
    assert "local folder" not in str(err.value)


def test_incompatible_config_is_named(saved, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["context_names"] = ["hero", "food"]
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="5 context embeddings but the model names 2 contexts"):
        load_pipeline(bad)
    config = json.loads((saved / "unet" / "config.json").read_text())
    shutil.copytree(saved, tmp_path / "bad2")
    config["block_out_channels"] = [32, 32, 32]
    (tmp_path / "bad2" / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        load_pipeline(tmp_path / "bad2")


def _fill_offline_cache(hf_home: Path, repo_id: str, folder: Path, sha: str) -> None:
    """A Hub cache as huggingface_hub lays it out: refs/main -> snapshots/<sha>/files."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(folder, repo / "snapshots" / sha)


def _load_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, hence a fresh interpreter.
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_load_by_repo_id_and_revision_from_offline_cache(pipe, saved, tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    _fill_offline_cache(tmp_path, "someone/sprites", saved, sha)
    expected = pipe("food", num_images=2, num_inference_steps=10, seed=2).array
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import numpy as np; from model import load_pipeline\n"
        f"for rev in (None, 'main', '{sha}'):\n"
        "    p = load_pipeline('someone/sprites', revision=rev)\n"
        "    out = p('food', num_images=2, num_inference_steps=10, seed=2).array\n"
        f"    assert np.array_equal(out, np.load(r'{tmp_path / 'expected.npy'}')), rev\n"
        "print('ok')\n"
    )
    result = _load_offline(tmp_path, code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_offline_uncached_repo_gives_clear_error(tmp_path):
    code = (
        "from model import ModelLoadError, load_pipeline\n"
        "try:\n    load_pipeline('someone/absent', revision='v2')\n"
        "except ModelLoadError as err:\n    print(err)\n"
    )
    result = _load_offline(tmp_path, code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hub repo 'someone/absent' at revision 'v2': not in the local cache" in result.stdout


def test_pickle_weights_are_not_loaded(saved, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(saved, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="weights must be safetensors"):
        load_pipeline(folder)
