"""The README's curl session works exactly as printed."""

from __future__ import annotations

import json
import re
import subprocess

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
