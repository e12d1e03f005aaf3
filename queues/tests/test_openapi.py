"""The OpenAPI document describes everything a client calls, also what
ninja does not serve: the websocket streams, /healthz and /metrics."""

from __future__ import annotations

from django.test import Client

from queues.api.frames import ConsumeIn


def test_openapi_describes_the_streams_healthz_and_metrics(api):
    paths = api.get("openapi.json").data["paths"]
    for stream in ("consume", "publish"):
        op = paths[f"/api/v1/queues/{{name}}/{stream}"]["get"]
        assert "101" in op["responses"] and op["security"] == [{"BearerAuth": []}]
        upgrade = next(p for p in op["parameters"] if p["in"] == "header")
        assert (upgrade["name"], upgrade["schema"]["enum"]) == ("Upgrade", ["websocket"])
        assert "README" in op["description"]
    consume = paths["/api/v1/queues/{name}/consume"]["get"]
    assert {p["name"] for p in consume["parameters"] if p["in"] == "query"} == set(ConsumeIn.model_fields)
    health = paths["/healthz"]["get"]
    assert set(health["responses"]) == {"200", "503"} and health["security"] == []
    assert "text/plain; version=0.0.4" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert paths["/metrics"]["get"]["security"] == [{"BearerAuth": []}]


def test_healthz_answers_as_documented(api):
    schema = api.get("openapi.json").data["paths"]["/healthz"]["get"]["responses"]["200"]["content"]
    body = Client().get("/healthz").json()
    required = schema["application/json"]["schema"]["required"]
    assert set(required) <= set(body) and body["status"] == "ok"


def test_openapi_document_ends_with_a_newline_like_every_api_answer(db):
    import orjson

    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    assert response.content.endswith(b"}\n") and not response.content.endswith(b"\n\n")
    assert orjson.loads(response.content)["openapi"].startswith("3.")
    assert Client().head("/api/v1/openapi.json").status_code == 200
    assert Client().get("/api/v1/docs").status_code == 200
