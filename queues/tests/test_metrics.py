"""/metrics: Prometheus text for a token with the metrics (or admin) scope,
or for anyone where MQ_METRICS_PUBLIC says the network is private."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from conftest import make_token
from queues import broker
from queues.api import auth


@pytest.fixture
def orders(db: None) -> None:
    auth.forget()
    broker.put_queue("orders", {})


def scrape(token: str | None = None) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client().get("/metrics", headers=headers)


def test_metrics_without_a_token_are_refused(orders: None) -> None:
    response = scrape()
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert b"orders" not in response.content


@pytest.mark.parametrize("scopes", ["produce", "consume", "produce,consume"])
def test_metrics_need_the_metrics_or_admin_scope(orders: None, scopes: str) -> None:
    response = scrape(make_token(scopes))
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "This token lacks the metrics scope."


@pytest.mark.parametrize("scopes", ["metrics", "admin"])
def test_metrics_are_scraped_with_a_metrics_or_admin_token(orders: None, scopes: str) -> None:
    response = scrape(make_token(scopes))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b'mq_queue_messages{queue="orders",state="ready"} 0.0' in response.content


def test_a_metrics_token_may_not_use_the_queues(orders: None) -> None:
    client = Client(headers={"Authorization": f"Bearer {make_token('metrics')}"})
    assert client.post("/api/v1/queues/orders/messages", {"body": 1}, content_type="application/json").status_code == 403
    assert client.post("/api/v1/queues/orders/receive", {}, content_type="application/json").status_code == 403


def test_metrics_are_public_where_the_setting_says_so(orders: None) -> None:
    with override_settings(MQ_METRICS_PUBLIC=True):
        assert scrape().status_code == 200


def test_a_metrics_token_is_created_on_the_command_line(orders: None, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("mq", "token", "create", "prometheus", "--scope", "metrics")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert scrape(raw).status_code == 200
