"""Run a Worker from the command line.

    python -m mqclient --url http://127.0.0.1:8000 --token $MQ_TOKEN \\
        --queue orders --handler myapp.tasks:handle --concurrency 4

(``python manage.py mq worker`` takes the same options.) URL and token
default to ``$MQ_URL`` and ``$MQ_TOKEN``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .client import Client
from .errors import MQError
from .worker import Handler, Worker

DEFAULT_URL = "http://127.0.0.1:8000"


def load_handler(spec: str) -> Handler:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--handler must be module:function, not {spec!r}")
    module = importlib.import_module(module_name)
    handler: Any = module
    for part in attr.split("."):
        handler = getattr(handler, part)
    if not callable(handler):
        raise ValueError(f"{spec} is not callable")
    return handler


def add_worker_arguments(parser: argparse.ArgumentParser, *, default_url: str = DEFAULT_URL) -> None:
    parser.add_argument("--queue", required=True, help="Queue to consume.")
    parser.add_argument("--handler", required=True, help="module:function called with each message.")
    parser.add_argument("--concurrency", type=int, default=1, help="Messages handled at once (threads).")
    parser.add_argument("--prefetch", type=int, default=0, help="Extra messages held ready beyond --concurrency.")
    parser.add_argument("--name", default=None, help="Consumer name (default: host:handler).")
    parser.add_argument("--url", default=None, help=f"Server (default: $MQ_URL or {default_url}).")
    parser.add_argument("--token", default=None, help="API token with the consume scope (default: $MQ_TOKEN).")
    parser.add_argument(
        "--heartbeat-timeout", type=int, default=None, help="Seconds of silence before the server declares us dead."
    )
    parser.add_argument("--visibility-timeout", type=int, default=None, help="Lease length (default: the queue's).")
    parser.add_argument("--poll-wait", type=float, default=5.0, help="Long-poll seconds per receive.")
    parser.add_argument(
        "--backoff-base", type=float, default=1.0, help="First retry delay (s) after a failure; doubles."
    )
    parser.add_argument("--backoff-max", type=float, default=300.0, help="Longest retry delay (s).")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="Take deliveries pushed on a websocket instead of long-polling (needs the websockets package).",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING …")


def run_worker(options: Any, *, default_url: str = DEFAULT_URL) -> int:
    """Build and run a Worker from parsed options; returns the exit code."""
    logging.basicConfig(
        level=str(options.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    token = options.token or os.environ.get("MQ_TOKEN")
    if not token:
        print("No API token: pass --token or set MQ_TOKEN (one with the consume scope).", file=sys.stderr)
        return 2
    url = options.url or os.environ.get("MQ_URL") or default_url
    try:
        handler = load_handler(options.handler)
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"Cannot load handler {options.handler!r}: {exc}", file=sys.stderr)
        return 2
    worker = Worker(
        Client(url, token),
        options.queue,
        handler,
        name=options.name,
        concurrency=options.concurrency,
        prefetch=options.prefetch,
        heartbeat_timeout=options.heartbeat_timeout,
        visibility_timeout=options.visibility_timeout,
        poll_wait=options.poll_wait,
        backoff_base=options.backoff_base,
        backoff_max=options.backoff_max,
        stream=options.stream,
    )
    try:
        return worker.run()
    except MQError as exc:
        print(f"{url} refused the worker: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqclient", description="Run an mqadmin worker.")
    add_worker_arguments(parser)
    return run_worker(parser.parse_args(argv))
