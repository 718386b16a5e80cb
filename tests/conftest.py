"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch
from hub_server import HubServer

HUB_TOKEN = "test-token-must-never-be-printed"  # what the stand-in Hub accepts for writes


@pytest.fixture
def hub_server():
    """A stand-in Hub on a free local port; reach it with HF_ENDPOINT=hub_server.url."""
    server = HubServer(token=HUB_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny and gain nothing from threads; on busy shared cores extra threads spin-wait
    for each other (measured 10-100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
