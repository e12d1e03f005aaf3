"""``python manage.py mq <verb>``: the one entry point for operators.

Thin on purpose: parse, then delegate to the broker, the monitor or daphne.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import signal
import sys
from argparse import ArgumentParser, Namespace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from queues import broker
from queues.exceptions import MQError
from queues.models import Scope, Token

SCOPES = [s.value for s in Scope]
# The account `mq operator` creates, and `mq operator --reset` gives a new password.
OPERATOR = "operator"


RESET_COMMAND = ".venv/bin/python manage.py mq operator --reset"


def _local_url() -> str:
    """This deployment's own server, as `mq serve` binds it."""
    host = "127.0.0.1" if settings.HOST in ("0.0.0.0", "::", "") else settings.HOST
    return f"http://{host}:{settings.PORT}"


class Command(BaseCommand):
    help = "mqadmin: serve, monitor, tokens and queues."

    def add_arguments(self, parser: ArgumentParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

        serve = verbs.add_parser("serve", help="Serve API, dashboard and admin with daphne (+ the monitor).")
        serve.add_argument("--host", default=None, help="Default: $HOST or 127.0.0.1.")
        serve.add_argument("--port", type=int, default=None, help="Default: $PORT or 8000.")
        serve.add_argument("--no-monitor", action="store_true", help="Do not run the monitor here.")
        serve.add_argument(
            "--workers",
            type=int,
            default=None,
            help="Processes sharing the port, e.g. one per core (default: $MQ_WORKERS or 1). "
            "Above 1 needs PostgreSQL and Redis (CHANNEL_LAYER_URL).",
        )
        serve.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a child of --workers

        verbs.add_parser("monitor", help="Run the monitor alone (leader-elected; run one per node).")

        operator = verbs.add_parser("operator", help="Create an operator (staff superuser) account if none exists.")
        operator.add_argument(
            "--reset", action="store_true", help=f"Give the account {OPERATOR!r} a new random password (creating it if missing)."
        )

        token = verbs.add_parser("token", help="API tokens.").add_subparsers(dest="action", required=True)
        create = token.add_parser("create", help="Create a token; prints it once, on the last line.")
        create.add_argument("name")
        create.add_argument("--scope", required=True, help=f"Comma-separated: {','.join(SCOPES)}.")
        create.add_argument("--queues", default="*", help="Glob of queue names (default: all).")
        token.add_parser("list", help="List tokens (never their secrets).")
        revoke = token.add_parser("revoke", help="Revoke a token by name.")
        revoke.add_argument("name")

        queue = verbs.add_parser("queue", help="Queues.").add_subparsers(dest="action", required=True)
        for action, text in (("create", "Create a queue."), ("update", "Change the given settings of a queue.")):
            settings = queue.add_parser(action, help=text)
            settings.add_argument("name")
            settings.add_argument("--visibility-timeout", type=int)
            settings.add_argument("--max-deliveries", type=int)
            settings.add_argument("--dead-letter", dest="dead_letter_queue")
            settings.add_argument("--retention", type=int)
            settings.add_argument("--delay", type=int)
            settings.add_argument("--fifo", action="store_true", default=None)
            settings.add_argument("--max-message-bytes", type=int)
            settings.add_argument("--max-depth", type=int)
        queue.add_parser("list", help="List queues with live counts.")
        purge = queue.add_parser("purge", help="Delete every message in a queue.")
        purge.add_argument("name")
        redrive = queue.add_parser("redrive", help="Move a dead-letter queue's messages back.")
        redrive.add_argument("name")
        redrive.add_argument("--max", type=int, default=None)

        from mqclient.cli import add_worker_arguments

        worker = verbs.add_parser("worker", help="Run a worker: a handler over a queue's messages (over the API).")
        add_worker_arguments(worker, default_url=_local_url())

        demo = verbs.add_parser("demo", help="The pizzeria: producers, three chefs, one crash (against a running server).")
        demo.add_argument("--url", default=None, help=f"Server (default: $MQ_URL or {_local_url()}).")
        demo.add_argument("--token", default=None, help="Admin token (default: $MQ_TOKEN, else a temporary one).")
        demo.add_argument("--seed", type=int, default=None, help="Random seed, to replay an evening.")

        bench = verbs.add_parser("bench", help="Benchmark against raw SQL, lean SQL, RabbitMQ and Procrastinate (PostgreSQL only).")
        bench.add_argument("--quick", action="store_true", help="A run of a couple of minutes (smaller sizes, fewer rounds).")
        bench.add_argument("--big", type=int, default=None, help="Messages waiting in the claim/dashboard scenarios (default 10,000,000; --quick 300,000).")
        bench.add_argument("--rounds", type=int, default=None, help="Rounds per scenario (default 5; --quick 3).")
        bench.add_argument("--peers", default="mqadmin_async,raw,lean,rabbitmq,procrastinate", help="Comma-separated peers to run beside mqadmin (mqadmin_async: a second server with MQ_ASYNC_COMMIT=on).")

    def handle(self, *args: Any, **options: Any) -> None:
        opts = Namespace(**options)
        try:
            getattr(self, f"do_{opts.verb}")(opts)
        except MQError as exc:
            raise CommandError(exc.message) from exc

    # -- serve / monitor -------------------------------------------------

    def do_serve(self, opts: Namespace) -> None:
        from daphne.cli import CommandLineInterface

        host = opts.host or settings.HOST
        port = opts.port or settings.PORT
        workers = opts.workers if opts.workers is not None else settings.MQ_WORKERS
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        if workers > 1 and opts.fd is None:
            from queues.serving import serve_workers

            sys.exit(serve_workers(host, port, workers, ["--no-monitor"] if opts.no_monitor else [], self.stdout))
        if settings.MQ_MONITOR and not opts.no_monitor:
            # daphne has no lifespan hook for Django: start the loop ourselves.
            from queues import monitor

            monitor.start_in_background()
        if opts.fd is None:
            # Bound here, not by daphne, for a backlog that takes a fleet of
            # consumers connecting at once; held open while daphne serves it.
            from queues.serving import listen

            sock = listen(host, port)
            self.stdout.write(f"mqadmin serving on http://{host}:{port}/  (dashboard /, admin /admin/, API /api/v1/docs)")
            self.stdout.flush()
            args = ["--fd", str(sock.fileno())]
        else:
            args = ["--fd", str(opts.fd)]  # the socket our parent bound (--workers)
        from queues.serving import add_reason_phrases, cap_connections, connection_limit, raise_fd_limit

        add_reason_phrases()
        cap_connections(connection_limit(settings.MQ_MAX_CONNECTIONS, raise_fd_limit()))
        if settings.TRUST_PROXY_HEADERS:
            # Client addresses from X-Forwarded-For: only behind our own proxy,
            # or any client could pick the address the auth brake sees.
            args.append("--proxy-headers")
        if settings.MQ_SPEEDUPS:
            from queues import speedups

            speedups.apply()
        # What the server holds for its life (Django, the URL conf, the
        # app) is loaded now and kept out of the garbage collector's passes:
        # without this a pass of its oldest generation scanned all of it,
        # tens of ms in which no request moved.
        import_string(settings.ASGI_APPLICATION)

        gc.collect()
        gc.freeze()
        CommandLineInterface().run([*args, settings.ASGI_APPLICATION.replace(".application", ":application")])

    def do_monitor(self, opts: Namespace) -> None:
        from queues.monitor import Monitor

        mon = Monitor()

        def stop(signum: int, frame: Any) -> None:
            mon._stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write("mq monitor running (Ctrl-C to stop)")
        self.stdout.flush()
        mon.run()

    # -- worker / demo -----------------------------------------------------

    def do_worker(self, opts: Namespace) -> None:
        from mqclient.cli import run_worker

        sys.exit(run_worker(opts, default_url=_local_url()))

    def do_demo(self, opts: Namespace) -> None:
        # The tools are no part of the app: imported only when asked for.
        from mqtools.demo import run_demo

        url = opts.url or os.environ.get("MQ_URL") or _local_url()
        sys.exit(run_demo(url, opts.token or os.environ.get("MQ_TOKEN"), seed=opts.seed, out=self.stdout))

    # -- bench -------------------------------------------------------------

    def do_bench(self, opts: Namespace) -> None:
        from mqtools import bench

        peers = tuple(p.strip() for p in opts.peers.split(",") if p.strip())
        try:
            bench.run(quick=opts.quick, big=opts.big, rounds=opts.rounds, peers=peers, out=self.stdout)
        except bench.BenchError as exc:
            raise CommandError(str(exc)) from exc

    # -- operator account --------------------------------------------------

    def do_operator(self, opts: Namespace) -> None:
        from django.contrib.auth import get_user_model

        User = get_user_model()
        password = secrets.token_urlsafe(12)
        if opts.reset:
            user = User.objects.filter(username=OPERATOR).first()
            if user is None:
                User.objects.create_superuser(OPERATOR, "", password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
            self._print_operator(f"New password for the operator account {OPERATOR!r}", password)
            return
        if User.objects.filter(is_staff=True).exists():
            self.stdout.write(f"Operator account already exists (a new password: {RESET_COMMAND}).")
            return
        User.objects.create_superuser(OPERATOR, "", password)
        self._print_operator("The operator account, shown only this once", password)

    def _print_operator(self, title: str, password: str) -> None:
        # Framed, and the last thing `make run` prints before the server's
        # banner: above it scroll pip and the migrations, below it the
        # access log; a password lost in either is a password never seen.
        lines = [
            title,
            "",
            f"log in at  {_local_url()}/",
            f"user       {OPERATOR}",
            f"password   {password}",
            "",
            f"a new one: {RESET_COMMAND}",
        ]
        width = max(len(line) for line in lines)
        border = "+" + "-" * (width + 4) + "+"
        self.stdout.write("\n".join(["", border, *(f"|  {line:<{width}}  |" for line in lines), border, ""]))

    # -- tokens ------------------------------------------------------------

    def do_token(self, opts: Namespace) -> None:
        if opts.action == "create":
            scopes = [s.strip() for s in opts.scope.split(",") if s.strip()]
            bad = [s for s in scopes if s not in SCOPES]
            if not scopes or bad:
                raise CommandError(f"--scope takes {', '.join(SCOPES)} (comma-separated), not {opts.scope!r}")
            if Token.objects.filter(name=opts.name).exists():
                raise CommandError(f"A token named {opts.name!r} exists; revoke it or pick another name.")
            token, raw = Token.issue(opts.name, scopes, opts.queues)
            self.stdout.write(
                f"Token {token.name!r} created: key id {token.key_id}, scopes {token.scopes}, queues {token.queue_pattern}.\n"
                "The full token is shown once; store it now:"
            )
            self.stdout.write(raw)
        elif opts.action == "list":
            rows = Token.objects.order_by("name")
            self.stdout.write(f"{'NAME':20} {'KEY ID':20} {'SCOPES':24} {'QUEUES':12} STATUS")
            for t in rows:
                status = "revoked" if t.revoked_at else "active"
                self.stdout.write(f"{t.name:20} {t.key_id:20} {t.scopes:24} {t.queue_pattern:12} {status}")
        elif opts.action == "revoke":
            from queues.api.auth import forget

            revoked = Token.objects.active().filter(name=opts.name).first()
            if revoked is None or not revoked.revoke():
                raise CommandError(f"No active token named {opts.name!r}.")
            forget(revoked.key_id)
            self.stdout.write(f"Token {opts.name!r} revoked.")

    # -- queues ------------------------------------------------------------

    def do_queue(self, opts: Namespace) -> None:
        if opts.action in ("create", "update"):
            config = {
                key: getattr(opts, key)
                for key in broker.QUEUE_FIELDS
                if getattr(opts, key, None) is not None
            }
            if opts.action == "create":
                queue, _ = broker.put_queue(opts.name, config, create_only=True)
                self.stdout.write(f"Queue {queue.name!r} created.")
            else:
                queue = broker.get_queue(opts.name)  # update only: a typo must not create a queue
                queue, _ = broker.put_queue(queue.name, config)
                self.stdout.write(f"Queue {queue.name!r} updated.")
        elif opts.action == "list":
            rows = broker.list_queues()
            self.stdout.write(f"{'QUEUE':30} {'READY':>8} {'DELAYED':>8} {'IN FLIGHT':>9} {'DEAD':>6}  SETTINGS")
            for q, c in rows:
                extra = f"vt={q.visibility_timeout}s max_deliveries={q.max_deliveries}"
                if q.dead_letter_queue:
                    extra += f" dlq={q.dead_letter_queue.name}"
                if q.fifo:
                    extra += " fifo"
                if q.paused:
                    extra += " PAUSED"
                self.stdout.write(f"{q.name:30} {c.ready:>8} {c.delayed:>8} {c.in_flight:>9} {c.dead:>6}  {extra}")
            if not rows:
                self.stdout.write("(no queues yet: mq queue create NAME)")
        elif opts.action == "purge":
            n = broker.purge(broker.get_queue(opts.name))
            self.stdout.write(f"Purged {n} messages from {opts.name!r}.")
        elif opts.action == "redrive":
            n = broker.redrive(broker.get_queue(opts.name), max_messages=opts.max)
            self.stdout.write(f"Moved {n} messages out of {opts.name!r}.")
        sys.stdout.flush()
