"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
from hub_server import HubServer

HUB_TOKEN = "test-token-must-never-be-printed"  # what the stand-in Hub accepts for writes


@pytest.fixture
def hub_server():
    """A stand-in Hub on a free local port; reach it with HF_ENDPOINT=hub_server.url."""
    server = HubServer(token=HUB_TOKEN)
    server.start()
    yield server
    server.stop()
