"""Fixtures of the client's tests: a live ``mq serve`` on the test database
(one per module) and a client with an admin token for it. The project's own
fixtures (``conftest.py`` at the root) apply here too."""

from __future__ import annotations

import secrets

import pytest
from mqclient import Client

from queues.models import Token
from queues.tests.live import live_server


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with live_server() as url:
        yield url


@pytest.fixture
def token(server, transactional_db) -> str:
    _token, raw = Token.issue(f"t-{secrets.token_hex(4)}", ["admin"])
    return raw


@pytest.fixture
def client(server, token) -> Client:
    return Client(server, token)
