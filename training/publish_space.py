"""Publish the app as a Hugging Face Space, and the model it serves as a model repo.

    python -m training.publish_space you/sprite-diffusion --dry-run          # what would go up, and its size
    python -m training.publish_space you/sprite-diffusion                    # the app on the bundled model
    python -m training.publish_space you/sprite-diffusion --model you/sprites --model_dir runs/sprites
    python -m training.publish_space you/my-copy --duplicate_from them/sprite-diffusion --model you/sprites

Only what the running app needs goes up (SPACE_FILES, the pictures and pages the README shows, and a
requirements.txt written for the chosen hardware), through huggingface_hub's upload_folder, which stores binary
files through LFS/Xet by itself: no git or git-lfs needed. With --model the Space's MODEL_ID variable points the
app at that model repo, pushed first from --model_dir unless it already exists.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, SpaceCard, SpaceHardware, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from model.loading import DEFAULT_MODEL_DIR
from training.hub import PushError, push_folder, redact

ROOT = Path(__file__).resolve().parents[1]
# What the app reads or imports, each pattern with why; every one must match a file, or the Space would not run.
SPACE_FILES = {
    "app.py": "the app (a Space runs it from the repo root)",
    "model/*.py": "the core the app runs",
    "model/default/**/*": "the bundled model, the app's default and its fallback",
    "ui/*.py": "the page's event functions",
    "ui/page.css": "the page's style",
    "ui/head.html": "the page's script for number boxes",
    "data/sprites_dcss.npz": "the dataset sprites of the Forward and Redraw tabs",
    "data/LICENSE-DATA.md": "the sprites' licence and credits",
    "docs/about.md": "the About tab's text",
    "docs/figures/steps_quality.png": "the About tab's plot",
    ".gitattributes": "LFS rules, so that a git push to the Space is accepted",
}
PICTURES = (".png", ".gif", ".jpg", ".jpeg", ".webp")
HARDWARE = [h.value for h in SpaceHardware]
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class PublishError(RuntimeError):
    """Publishing failed or cannot start; the message says why and what, if anything, reached the Hub."""


def _linked(page: Path) -> set[Path]:
    """The local files a Markdown page links or shows, that exist."""
    found = set()
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
        path = (page.parent / target).resolve()
        if "://" not in target and path.is_file() and ROOT in path.parents:
            found.add(path)
    return found


def readme_files() -> set[Path]:
    """The pictures the README shows and the doc pages it links, with the pictures those pages show: the Space's
    card renders them. Data files, studies' outputs and code the docs link to stay out."""
    pages = {p for p in _linked(ROOT / "README.md") if p.suffix == ".md" and p.parent == ROOT / "docs"}
    shown = set().union(_linked(ROOT / "README.md"), *(_linked(p) for p in pages))
    return pages | {p for p in shown if p.suffix.lower() in PICTURES}


def space_files() -> dict[str, Path]:
    """Relative path in the Space -> file in this checkout (requirements.txt and README.md are written apart)."""
    files: dict[str, Path] = {}
    for pattern, why in SPACE_FILES.items():
        matched = sorted(p for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
        if not matched:
            raise PublishError(f"{pattern} is missing from {ROOT} ({why}): the Space would not run without it")
        files.update({p.relative_to(ROOT).as_posix(): p for p in matched})
    files.update({p.relative_to(ROOT).as_posix(): p for p in readme_files()})
    files.pop("README.md", None)
    return dict(sorted(files.items()))


def space_requirements(hardware: str) -> str:
    """The repo's requirements.txt (what the app imports) with the torch build for the hardware: on a CPU Space,
    PyTorch's CPU wheel, as PyPI's default carries several GB of CUDA libraries a CPU never uses."""
    text = (ROOT / "requirements.txt").read_text()
    if not hardware.startswith("cpu"):
        return text
    pin = re.search(r"^torch==([\w.]+)\s*$", text, re.MULTILINE)
    if pin is None:
        raise PublishError("requirements.txt must pin torch as torch==VERSION to choose its CPU build")
    header = (f"# Written by training/publish_space.py for {hardware} hardware: PyTorch's CPU build.\n"
              "--extra-index-url https://download.pytorch.org/whl/cpu\n")
    return header + text.replace(pin.group(0), f"torch=={pin.group(1)}+cpu")


def space_readme(model: str | None, hardware: str) -> str:
    """The README with its Space front matter: the model it serves under models:, the hardware it was made for."""
    card = SpaceCard.load(ROOT / "README.md")
    card.data.models = [model] if model else []
    card.data.suggested_hardware = hardware
    return str(card)


def stage(folder: Path, hardware: str, model: str | None, files: dict[str, Path] | None = None) -> dict[str, int]:
    """Write the Space's files (``files``, else space_files()) into folder; returns each relative path's size."""
    for relative, source in (files or space_files()).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)
    (folder / "requirements.txt").write_text(space_requirements(hardware))
    (folder / "README.md").write_text(space_readme(model, hardware))
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _reason(err: Exception, repo_id: str) -> str:
    """One sentence for what went wrong with a Hub call."""
    if isinstance(err, PushError):  # already one sentence, naming the model repo
        return str(err)
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status == 401:
        return "the Hub refused the token (401): it is invalid or expired; log in again with `hf auth login`"
    if isinstance(err, HfHubHTTPError) and status == 403:
        return f"no write access to {repo_id} (403): the token is read-only or the name is someone else's"
    name = type(err).__name__
    if any(word in name for word in ("Connect", "Timeout", "Network")) or isinstance(err, OSError):
        return f"cannot reach the Hub at {constants.ENDPOINT} ({name}): check the network connection or HF_ENDPOINT"
    detail = redact(" ".join(str(err).split())[:400])
    return f"{name}: {detail}" if detail else name


def _check_namespace(api: HfApi, *repo_ids: str) -> None:
    """Each repo must be in the token's own namespace or one of its organisations: a name someone else holds
    fails here, before anything is written."""
    try:
        me = api.whoami()
    except Exception as err:
        raise PublishError(f"{_reason(err, repo_ids[0])}. Nothing was published.") from None
    mine = {me["name"], *(org["name"] for org in me.get("orgs") or [])}
    for repo_id in repo_ids:
        if repo_id.split("/")[0] not in mine:
            raise PublishError(f"{repo_id} is not in your namespace ({', '.join(sorted(mine))}): the name belongs "
                               "to someone else; pick OWNER as one of yours. Nothing was published.")


def _model_ready(api: HfApi, model: str, model_dir: Path | None, private: bool, done: list[str]) -> None:
    """Use the model repo as it is, or push model_dir (the bundled model by default) when it does not exist yet
    or model_dir is given."""
    if model_dir is None and api.repo_exists(model):  # anyone's model the token can read
        done.append(f"used the existing model repo {model}")
        return
    _check_namespace(api, model)  # a model to push must be the token's own
    from model import ModelLoadError, load_pipeline

    folder = model_dir or DEFAULT_MODEL_DIR
    try:
        load_pipeline(folder)  # a model the app cannot load must not go up: the Space would fall back silently
    except ModelLoadError as err:
        raise PublishError(f"{err}. Nothing was published.") from None
    done.append(f"began pushing {folder} to the model repo {model}")
    push_folder(folder, model, token=api.token, private=private, commit_message=f"Upload {folder.name}")
    done[-1] = f"pushed {folder} to the model repo {model}"


def publish(repo_id: str, *, model: str | None = None, model_dir: Path | None = None,
            model_revision: str | None = None, hardware: str = "cpu-basic", private: bool = False,
            duplicate_from: str | None = None, token: str | None = None) -> str:
    """Create or update the Space (or duplicate one) and point it at the model; returns the Space's address."""
    files = space_files() if duplicate_from is None else {}  # a missing file fails before any upload
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token with "
                           "write access. Nothing was published.")
    api = HfApi(token=token)
    _check_namespace(api, repo_id)
    variables = [{"key": "MODEL_ID", "value": model}] if model else []
    variables += [{"key": "MODEL_REVISION", "value": model_revision}] if model and model_revision else []
    done: list[str] = []
    try:
        if model:
            _model_ready(api, model, model_dir, private, done)
        if duplicate_from:
            api.duplicate_repo(duplicate_from, to_id=repo_id, repo_type="space", private=private,
                               space_hardware=hardware, space_variables=variables or None)
            done.append(f"duplicated {duplicate_from} as {repo_id}")
        else:
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", space_hardware=hardware,
                            private=private, exist_ok=True)
            done.append(f"created the Space repo {repo_id} (its files had not arrived)")
            with tempfile.TemporaryDirectory() as folder:
                stage(Path(folder), hardware, model, files)
                api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                                  commit_message=f"Publish Sprite Diffusion ({len(files) + 2} files)")
            done[-1] = f"uploaded the app to the Space {repo_id}"
            api.request_space_hardware(repo_id, hardware)  # an existing Space keeps its hardware otherwise
            for variable in variables:
                api.add_space_variable(repo_id, variable["key"], variable["value"])
    except PublishError:
        raise
    except Exception as err:
        so_far = f" Done before it failed: {'; '.join(done)}. Rerun the same command to finish; it is safe to " \
                 "repeat." if done else " Nothing was published."
        raise PublishError(f"{_reason(err, repo_id)}.{so_far}") from None
    return f"{constants.ENDPOINT}/spaces/{repo_id}"


def _repo_id(text: str) -> str:
    if not REPO_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not OWNER/NAME")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("space", type=_repo_id, help="the Space to create or update, OWNER/NAME")
    parser.add_argument("--model", type=_repo_id, help="model repo OWNER/NAME the Space serves (its MODEL_ID)")
    parser.add_argument("--model_dir", type=Path, help="push this trained folder to --model (default: the bundled "
                                                       "model, pushed only when the repo does not exist yet)")
    parser.add_argument("--model_revision", help="pin the model's branch, tag or commit (the Space's MODEL_REVISION)")
    parser.add_argument("--hardware", choices=HARDWARE, default="cpu-basic", metavar="FLAVOUR",
                        help="cpu-basic (default), cpu-upgrade, zero-a10g (ZeroGPU), t4-small, ...: a CPU Space "
                             "installs PyTorch's CPU build, a GPU Space the CUDA build")
    parser.add_argument("--private", action="store_true", help="create the Space (and a new model repo) private")
    parser.add_argument("--duplicate_from", type=_repo_id, metavar="SPACE",
                        help="copy this Space instead of uploading this checkout")
    parser.add_argument("--dry-run", action="store_true", help="list the Space's files and their size; upload nothing")
    args = parser.parse_args(argv)
    if args.model_dir and not args.model:
        parser.error("--model_dir needs --model, the repo to push it to")
    try:
        if args.dry_run:
            with tempfile.TemporaryDirectory() as folder:
                sizes = stage(Path(folder), args.hardware, args.model)
            print("\n".join(sizes))
            print(f"total: {len(sizes)} files, {sum(sizes.values()) / 1e6:.1f} MB", file=sys.stderr)
            return 0
        url = publish(args.space, model=args.model, model_dir=args.model_dir, model_revision=args.model_revision,
                      hardware=args.hardware, private=args.private, duplicate_from=args.duplicate_from)
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"published {url}" + (f", serving {args.model}" if args.model else ""))
    if args.private and args.model:
        print("note: a private model repo needs a read token in the Space: add it as the secret HF_TOKEN "
              "(the Space's Settings, Secrets)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
