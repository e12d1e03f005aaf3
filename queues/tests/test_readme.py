"""The README's curl session works exactly as printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .live import ROOT, live_server, subprocess_env


def readme_session() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A first session with curl", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.mark.django_db(transaction=True)
def test_readme_curl_session_works_as_printed():
    script = readme_session()
    assert "127.0.0.1:8000" in script
    with live_server() as url:
        port = url.rsplit(":", 1)[1]
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    answers = json_documents(run.stdout)
    created, sent, acked, counts = answers
    assert created["name"] == "orders"
    assert [m["duplicate"] for m in sent["messages"]] == [False, False]
    assert "{'pizza': 'margherita'}" in run.stderr  # priority 5 came first
    assert acked == {"acked": [sent["messages"][1]["id"]], "stale": []}
    assert (counts["ready"], counts["in_flight"]) == (1, 0)


def json_documents(text: str) -> list[dict]:
    """The JSON answers curl printed back to back."""
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


def test_readme_says_how_to_serve_on_another_port_and_demo_follows_it():
    commands = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "PORT=9000 make run" in commands and "HOST=0.0.0.0 make run" in commands
    assert "PORT=9000 make demo" in commands and "MQ_URL=http://127.0.0.1:9000 make demo" in commands
    # What it says holds: with the same PORT, the demo (and a worker) looks for that server.
    env = {k: v for k, v in subprocess_env(PORT="9000").items() if k not in ("MQ_URL", "HOST")}
    for verb in ("demo", "worker"):
        run = subprocess.run(
            [sys.executable, "manage.py", "mq", verb, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert "$MQ_URL or http://127.0.0.1:9000" in " ".join(run.stdout.split()), run.stdout
