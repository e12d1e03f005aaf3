"""`mq demo` (the pizzeria) without a server to run against."""

from __future__ import annotations

import io

from mqtools.demo import run_demo

from .live import free_port


def test_demo_says_how_to_start_a_server_when_none_runs(db):
    out = io.StringIO()
    assert run_demo(f"http://127.0.0.1:{free_port()}", "mqx.y", out=out) == 1
    assert "make run" in out.getvalue()
