"""Shared pytest fixtures."""

from __future__ import annotations

import os

# Set before huggingface_hub is imported (it reads this once), and inherited by every subprocess a test starts:
# with hf_xet installed, huggingface_hub uploads binary files through the Hub's Xet protocol, with no fallback,
# which the stand-in Hub (tests/hub_server.py) does not speak; this selects the legacy LFS upload it does check.
os.environ["HF_HUB_DISABLE_XET"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import HubServer  # noqa: E402

from model import SpritePipeline, build_unet, make_scheduler  # noqa: E402

HUB_TOKEN = "test-token-must-never-be-printed"  # what the stand-in Hub accepts for writes
NAMES = ["hero", "non-hero", "food", "spell", "item"]  # the default dataset's contexts


@pytest.fixture
def hub_server():
    """A stand-in Hub on a free local port; reach it with HF_ENDPOINT=hub_server.url."""
    server = HubServer(token=HUB_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved pipeline with a random tiny U-Net and the default contexts."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny and gain nothing from threads; on busy shared cores extra threads spin-wait
    for each other (measured 10-100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
