"""The app as a Hugging Face Space: LFS rules for git pushes, what `training.publish_space` uploads, and the
published Space's snapshot started the way a Space starts it, against the stand-in Hub (tests/hub_server.py)."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import HUB_TOKEN
from gradio_client import Client
from hub_server import HubServer, is_binary
from huggingface_hub import HfApi, snapshot_download
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from PIL import Image

from model import load_pipeline, make_grid
from training import publish_space

ROOT = Path(__file__).resolve().parents[1]
SPACE = "tester/sprite-diffusion"
REQUEST = dict(context="hero", weights="", num_inference_steps=8, sampler="DDPM", add_noise=True, noise_scale=1.0,
               guidance_scale=1.0, num_images=4, seed=7, randomize_seed=False)
START_S = 300  # longest wait for a started app to serve (imports and, on a busy machine, much more)


def test_every_tracked_binary_file_has_an_lfs_rule():
    """The Hub refuses a git push that carries binary files outside LFS; .gitattributes must route every one."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [p for p in tracked.decode().split("\0") if p and (ROOT / p).is_file()]
    binary = [p for p in paths if is_binary((ROOT / p).read_bytes()[:8000])]
    assert "model/default/unet/diffusion_pytorch_model.safetensors" in binary and "data/sprites_dcss.npz" in binary
    checked = subprocess.run(["git", "check-attr", "-z", "--stdin", "filter"], cwd=ROOT, capture_output=True,
                             check=True, input="\0".join(binary).encode()).stdout.decode().split("\0")
    filters = dict(zip(checked[0::3], checked[2::3], strict=False))  # path, attribute, value, ...
    assert [p for p in binary if filters.get(p) != "lfs"] == []


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level modules a file imports: (required, optional), optional being those under `except ImportError`."""
    required, optional = set(), set()
    tree = ast.parse(path.read_text())
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
               and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)
               for n in ast.walk(ast.Module(body=t.body, type_ignores=[]))}
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        (optional if id(node) in guarded else required).update(n.split(".")[0] for n in names)
    return required, optional


def _requirement_names(text: str) -> set[str]:
    return {re.split(r"[=<>\[ ;]", line.strip())[0].lower().replace("_", "-")
            for line in text.splitlines() if line.strip() and not line.strip().startswith(("#", "-"))}


def _with_dependencies(names: set[str]) -> set[str]:
    """The installed distributions these need, themselves included."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


def test_space_installs_exactly_what_the_app_imports():
    """requirements.txt (all a Space installs) lists each package the Space's code imports, and no other:
    training-only packages (accelerate, datasets, tensorboard) live in requirements-train.txt."""
    own = {"app", "model", "ui"}
    required = set()
    for relative, path in publish_space.space_files().items():
        if relative.endswith(".py"):
            required |= _imports(path)[0]
    modules = {m for m in required - own if m not in sys.stdlib_module_names}
    providers = importlib.metadata.packages_distributions()
    imported = {providers[m][0].lower().replace("_", "-") for m in modules}
    listed = _requirement_names((ROOT / "requirements.txt").read_text())
    assert imported <= _with_dependencies(listed), "the app imports packages a Space would not install"
    assert listed <= imported, "requirements.txt lists packages the app does not import"
    assert not listed & _requirement_names((ROOT / "requirements-train.txt").read_text())


def test_the_space_card_matches_what_the_space_runs():
    """A Space installs the card's sdk_version of gradio, on its python_version, and runs its app_file."""
    from huggingface_hub import SpaceCard
    card = SpaceCard.load(ROOT / "README.md").data
    gradio_pin = re.search(r"^gradio==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)[1]
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio_pin, "app.py")
    requires = re.search(r'^requires-python = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    assert (ROOT / card.app_file).is_file() and card.python_version in SpecifierSet(requires)


def test_space_requirements_follow_the_hardware():
    cpu = publish_space.space_requirements("cpu-basic").splitlines()
    gpu = publish_space.space_requirements("t4-small").splitlines()
    assert gpu == (ROOT / "requirements.txt").read_text().splitlines() and "torch==2.13.0" in gpu
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu and "torch==2.13.0+cpu" in cpu
    assert [x for x in cpu if not x.startswith(("#", "--", "torch=="))] == \
        [x for x in gpu if not x.startswith(("#", "torch=="))]


def test_dry_run_lists_what_the_space_needs_and_no_test_benchmark_or_study(capsys):
    assert publish_space.main([SPACE, "--dry-run", "--model", "tester/sprite-model"]) == 0
    out, err = capsys.readouterr()
    listed = out.splitlines()
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes", "model/pipeline.py", "ui/events.py",
            "model/default/unet/diffusion_pytorch_model.safetensors", "data/sprites_dcss.npz",
            "docs/about.md"} <= set(listed)
    assert not [p for p in listed if p.startswith(("tests/", "benchmarks/", "training/", "studies/", "runs/", ".ci/"))
                or p.endswith((".json", ".npy")) and not p.startswith("model/default/")]
    assert not [p for p in listed if p.startswith("model/teacher/")], "the teacher is for training, not the page"
    total = re.fullmatch(r"total: (\d+) files, ([\d.]+) MB\n", err)
    assert total and int(total[1]) == len(listed)
    stated = re.search(r"The Space holds about (\d+) MB", (ROOT / "README.md").read_text())
    assert stated and abs(int(stated[1]) - float(total[2])) < 1.5, "the README states the Space's size"


def test_publish_refuses_with_one_sentence_and_publishes_nothing(hub_server, monkeypatch, tmp_path, capsys):
    """No token, a name someone else holds, no network, a file the app needs that is missing."""
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached login
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def refusal(*args: str) -> str:
        assert publish_space.main([*args]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err and HUB_TOKEN not in err
        return err

    assert "no Hugging Face token" in refusal(SPACE)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert "someone/sprites is not in your namespace (tester)" in refusal("someone/sprites")
    assert "someone/model is not in your namespace" in refusal(SPACE, "--model", "someone/model")
    monkeypatch.setattr(publish_space, "SPACE_FILES", {**publish_space.SPACE_FILES, "docs/gone.md": "a test"})
    assert "docs/gone.md is missing" in refusal(SPACE)
    monkeypatch.undo()
    with socket.socket() as closed:  # a port nobody listens on: the network is down
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert "cannot reach the Hub at http://127.0.0.1:" in refusal(SPACE)
    assert hub_server.repos == {}


def test_a_failure_after_the_model_push_says_what_reached_the_hub(hub_server, monkeypatch, tiny_dir, capsys):
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    upload = HfApi.upload_folder

    def network_down_for_spaces(self, *args, **kwargs):
        if kwargs.get("repo_type") == "space":
            raise httpx.ConnectError("connection refused")
        return upload(self, *args, **kwargs)
    monkeypatch.setattr(HfApi, "upload_folder", network_down_for_spaces)
    assert publish_space.main([SPACE, "--model", "tester/sprite-model", "--model_dir", str(tiny_dir)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of the model's push
    assert err.startswith("error: cannot reach the Hub at ")
    assert f"pushed {tiny_dir} to the model repo tester/sprite-model; created the Space repo {SPACE}" in err
    assert "Rerun the same command to finish" in err
    assert hub_server.files(SPACE, repo_type="space") == {}  # the Space is there, empty, as the message says


def test_the_about_tab_names_the_space_it_runs_in(monkeypatch):
    import app
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app.about_text() == app.ABOUT
    monkeypatch.setenv("SPACE_ID", "someone/sprites")
    assert "This Space is `someone/sprites`" in app.about_text()
    assert 'duplicate_repo("someone/sprites", to_id=' in app.about_text()


# ---- the published Space, run as a Space runs it --------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    server = HubServer(token=HUB_TOKEN)
    server.start()
    yield server
    server.stop()


def hub_env(hub: HubServer, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH", "MODEL_ID", "SPACE_ID")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": HUB_TOKEN, "HF_HOME": str(home), **extra}


@pytest.fixture(scope="module")
def published(hub, tiny_dir, tmp_path_factory) -> Path:
    """The app published to the stand-in Hub with a model repo of its own, then downloaded into an empty folder."""
    env = hub_env(hub, tmp_path_factory.mktemp("publisher"))
    result = subprocess.run([sys.executable, "-m", "training.publish_space", SPACE, "--model", "tester/sprite-model",
                             "--model_dir", str(tiny_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"published {hub.url}/spaces/{SPACE}, serving tester/sprite-model"
    folder = tmp_path_factory.mktemp("space")
    snapshot_download(SPACE, repo_type="space", local_dir=folder, endpoint=hub.url, token=HUB_TOKEN)
    return folder


@pytest.mark.slow  # a stand-in Hub server and a publish in a subprocess
def test_publish_sends_binaries_through_lfs_and_points_the_space_at_the_model(hub, published, tiny_dir):
    files = hub.files(SPACE, repo_type="space")
    weights = (ROOT / "model/default/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert files["model/default/unet/diffusion_pytorch_model.safetensors"] == weights
    assert hashlib.sha256(weights).hexdigest() in hub.lfs  # put, checked and verified through LFS
    assert not [p for p in files if p.startswith(("tests/", "benchmarks/", "training/"))]
    assert hub.variables[f"spaces/{SPACE}"] == {"MODEL_ID": "tester/sprite-model"}
    assert hub.hardware[f"spaces/{SPACE}"] == "cpu-basic"
    assert "torch==2.13.0+cpu" in files["requirements.txt"].decode()
    front = files["README.md"].decode().split("---")[1]
    assert "models:\n- tester/sprite-model" in front and "sdk: gradio" in front and "app_file: app.py" in front
    pushed = hub.files("tester/sprite-model")
    assert pushed["unet/diffusion_pytorch_model.safetensors"] == \
        (tiny_dir / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert sorted(p.relative_to(published).as_posix() for p in published.rglob("*")
                  if p.is_file() and ".cache" not in p.parts) == sorted(files)


@pytest.mark.slow  # a stand-in Hub server
def test_duplicating_the_space_copies_it_with_its_own_model(hub, published):
    """The README's "Make it yours" route, in code: a server-side copy with the copy's own MODEL_ID."""
    from huggingface_hub import HfApi
    HfApi(endpoint=hub.url, token=HUB_TOKEN).duplicate_repo(
        SPACE, to_id="tester/my-sprites", repo_type="space",
        space_variables=[{"key": "MODEL_ID", "value": "tester/my-model"}])
    assert hub.files("tester/my-sprites", repo_type="space") == hub.files(SPACE, repo_type="space")
    assert hub.variables["spaces/tester/my-sprites"] == {"MODEL_ID": "tester/my-model"}


class SpaceProcess:
    """`python app.py` in the snapshot, as a Space starts it: its own folder, 0.0.0.0, a port of its own."""

    def __init__(self, folder: Path, env: dict[str, str]):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**env, "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()

    def wait_for(self, *patterns: str) -> list[re.Match]:
        """Read the log until a line has matched each pattern (the states the test needs), in any order; fail
        with the log if the app exits first."""
        found: dict[str, re.Match] = {}
        deadline = time.monotonic() + START_S
        while len(found) < len(patterns) and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "the app exited:\n" + "".join(self.log)[-4000:]
                continue
            self.log.append(line)
            found |= {p: m for p in patterns if p not in found and (m := re.search(p, line))}
        missing = [p for p in patterns if p not in found]
        assert not missing, f"no log line matched {missing} in {START_S} s:\n" + "".join(self.log)[-4000:]
        return [found[p] for p in patterns]

    def generate(self, tmp_path: Path) -> tuple[np.ndarray, str]:
        client = Client(f"http://127.0.0.1:{self.port}/", download_files=str(tmp_path), analytics_enabled=False,
                        verbose=False)
        outputs = client.predict(**REQUEST, api_name="/generate")
        sheet = np.asarray(Image.open(outputs[4]).convert("RGB"))
        return sheet, outputs[5]

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return "".join(self.log)


def expected_sheet(folder: Path | None) -> np.ndarray:
    pipe = load_pipeline(folder) if folder else load_pipeline()
    out = pipe(REQUEST["context"], num_images=4, num_inference_steps=8, sampler="ddpm", guidance_scale=1.0, seed=7)
    return make_grid(out.array, padding=0)


def run_space(folder: Path, env: dict[str, str], tmp_path: Path, *ready: str):
    """Start the snapshot, wait until it serves (and any other ``ready`` log lines), generate once, stop it."""
    space = SpaceProcess(folder, env)
    try:
        origin, *_ = space.wait_for(r"Sprite Diffusion: app (\S+), model package (\S+)", "Running on local URL", *ready)
        sheet, stats = space.generate(tmp_path)
    finally:
        log = space.stop()
    # The code that ran is the snapshot's, not the checkout's (which the test's venv has installed, editable).
    assert Path(origin[1]) == folder.resolve() / "app.py" and Path(origin[2]) == folder.resolve() / "model"
    return sheet, stats, log


@pytest.mark.slow  # starts the published app in a subprocess
def test_the_spaces_snapshot_serves_the_bundled_model_as_a_space(hub, published, tmp_path):
    env = hub_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1")
    sheet, stats, log = run_space(published, env, tmp_path)
    assert "**4 sprites, 8 DDPM steps" in stats
    assert np.abs(sheet.astype(int) - expected_sheet(None)).mean() < 2, "not the bundled model's sprites"
    assert "Traceback" not in log


@pytest.mark.slow  # starts the published app in a subprocess
def test_the_spaces_snapshot_serves_the_model_its_variable_names(hub, published, tiny_dir, tmp_path):
    variables = hub.variables[f"spaces/{SPACE}"]  # what the Space's settings hold, as the Space sets them
    env = hub_env(hub, tmp_path / "hf", SPRITE_DISABLE_COMPILE="1", **variables)
    sheet, stats, log = run_space(published, env, tmp_path)
    assert "Loaded MODEL_ID tester/sprite-model" in log
    tiny, bundled = expected_sheet(tiny_dir), expected_sheet(None)
    assert np.abs(sheet.astype(int) - tiny).mean() < 2 < np.abs(sheet.astype(int) - bundled).mean()


@pytest.mark.slow  # starts the published app in a subprocess, which tries to compile and cannot
def test_the_spaces_snapshot_without_a_c_compiler_serves_uncompiled_and_says_so(hub, published, tmp_path):
    no_tools = tmp_path / "empty-bin"
    no_tools.mkdir()
    env = hub_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1", CC=str(tmp_path / "missing-cc"),
                  CXX=str(tmp_path / "missing-c++"), PATH=str(no_tools),
                  TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))  # no compiled kernels from earlier runs
    sheet, stats, log = run_space(published, env, tmp_path, r"torch.compile is unavailable here \(")
    assert "eager (uncompiled): torch.compile is unavailable on this machine" in stats
    assert np.abs(sheet.astype(int) - expected_sheet(None)).mean() < 2
    assert "compiled the U-Net" not in log and "Traceback" not in log
