"""Fixtures of the admin tests."""

from __future__ import annotations

import pytest

from queues import events


@pytest.fixture(autouse=True)
def _fresh_events() -> None:
    events.drain()
