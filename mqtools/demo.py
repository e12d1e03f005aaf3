"""``mq demo``: the pizzeria from the seed of this project, against a running
server.

Customers (producers) order drinks (priority 5, quick) and pizzas (priority
0, slow) into one queue. Three chefs (``mq worker`` processes running
``cook``) take orders; drinks jump ahead of waiting pizzas. One chef is
killed with SIGKILL in the middle of a pizza: no goodbye, no ack. The
monitor stops hearing his heartbeats, declares him dead and hands his order
to the others at once. At the end: what was ordered, served, redelivered and
how long each kind waited. Everything it does shows live on the dashboard.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from mqclient import Client, MQError

ORDERS = "pizzeria.orders"
CHEFS = ("Mario", "Luigi", "Sofia")
VICTIM = "Luigi"
# Chefs are declared dead after this much silence (the server's minimum is 2).
CHEF_HEARTBEAT_TIMEOUT = 4
# Long enough that only the heartbeat, not the lease, can bring a crashed
# chef's order back during the demo.
ORDER_VISIBILITY_TIMEOUT = 60
CUSTOMERS = ("Ana", "Ben", "Chiara", "Dev", "Elif", "Femi", "Greta", "Hiro", "Ines")
DRINKS = ("lemonade", "espresso", "chinotto", "sparkling water", "birra")
PIZZAS = ("margherita", "marinara", "diavola", "quattro formaggi", "capricciosa", "funghi")
DRINK_PRIORITY = 5
DRINK_SECONDS = (0.2, 0.5)
PIZZA_SECONDS = (3.0, 5.0)
# Seconds between customers walking in: faster than three chefs can bake,
# so orders wait and priority shows.
ARRIVAL_SECONDS = (0.5, 1.2)
# The demo ends by itself by then, served or not.
DEADLINE_SECONDS = 75.0
# The victim collapses only after this long, so the evening is under way.
CRASH_AFTER_SECONDS = 5.0
EVENT_PREFIX = "@pizzeria "


class Output(Protocol):
    """Where the story is told (a management command's stdout, a file)."""

    def write(self, msg: str) -> Any: ...

    def flush(self) -> None: ...


# --------------------------------------------------------------------------- #
# The chef: what each `mq worker --handler mqtools.demo:cook` does per order
# --------------------------------------------------------------------------- #


def cook(message: Any) -> None:
    """Make one order: announce it, take the time it takes, announce it done
    (the worker acks when this returns)."""
    order = message.body
    chef = os.environ.get("MQ_DEMO_CHEF", "chef")
    _announce("start", chef, order, message.delivery_count)
    time.sleep(float(order["seconds"]))
    _announce("done", chef, order, message.delivery_count)


def _announce(kind: str, chef: str, order: dict[str, Any], delivery: int) -> None:
    event = {"event": kind, "chef": chef, "order": order["order"], "delivery": delivery, "at": time.time()}
    print(EVENT_PREFIX + json.dumps(event), flush=True)


# --------------------------------------------------------------------------- #
# The evening
# --------------------------------------------------------------------------- #


@dataclass
class Order:
    number: int
    kind: str  # "drink" | "pizza"
    item: str
    customer: str
    seconds: float
    ordered_at: float = 0.0
    started_at: float | None = None  # first start
    served_at: float | None = None
    served_by: str | None = None
    starts: list[tuple[str, int, float]] = field(default_factory=list)  # chef, delivery, at


class Evening:
    def __init__(self, client: Any, out: Output, rng: random.Random) -> None:
        self.client = client
        self.out = out
        self.rng = rng
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.orders: dict[int, Order] = {}
        self.ordering_done = threading.Event()
        self.all_served = threading.Event()
        self.chefs: dict[str, subprocess.Popen[str]] = {}
        self.chef_ids: dict[str, str] = {}  # consumer name -> id
        self.crashed_at: float | None = None
        self.declared_dead_at: float | None = None
        self.crash_armed = threading.Event()

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"[{time.time() - self.t0:5.1f}s] {text}\n")
            self.out.flush()

    # -- customers -------------------------------------------------------

    def customers(self) -> None:
        number = 0
        for name in CUSTOMERS:
            items: list[tuple[str, str]] = [("drink", self.rng.choice(DRINKS)) for _ in range(self.rng.randint(1, 2))]
            items += [("pizza", self.rng.choice(PIZZAS)) for _ in range(self.rng.randint(1, 2))]
            batch, now, placed = [], time.time(), []
            for kind, item in items:
                number += 1
                placed.append(f"{_article(item)} {item} (#{number})")
                low, high = DRINK_SECONDS if kind == "drink" else PIZZA_SECONDS
                order = Order(number, kind, item, name, round(self.rng.uniform(low, high), 1), ordered_at=now)
                with self.lock:
                    self.orders[number] = order
                batch.append(
                    {
                        "body": {
                            "order": number,
                            "kind": kind,
                            "item": item,
                            "customer": name,
                            "seconds": order.seconds,
                        },
                        "priority": DRINK_PRIORITY if kind == "drink" else 0,
                        "dedup_id": f"order-{self.t0:.0f}-{number}",
                    }
                )
            # One batch per customer: all of it is ordered, or none.
            self.client.send_batch(ORDERS, batch)
            self.say(f"{name} orders " + ", ".join(placed))
            time.sleep(self.rng.uniform(*ARRIVAL_SECONDS))
        self.ordering_done.set()

    # -- chefs -----------------------------------------------------------

    def hire(self, url: str, token: str) -> None:
        manage = str(settings.BASE_DIR / "manage.py")
        for chef in CHEFS:
            env = {**os.environ, "MQ_URL": url, "MQ_TOKEN": token, "MQ_DEMO_CHEF": chef, "PYTHONUNBUFFERED": "1"}
            cmd = [
                sys.executable, manage, "mq", "worker", "--queue", ORDERS, "--handler", "mqtools.demo:cook",
                "--name", f"chef {chef}", "--heartbeat-timeout", str(CHEF_HEARTBEAT_TIMEOUT),
                "--poll-wait", "2", "--log-level", "WARNING",
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.chefs[chef] = proc
            threading.Thread(target=self.listen, args=(chef, proc), daemon=True).start()

    def listen(self, chef: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(EVENT_PREFIX):
                self.on_event(json.loads(line[len(EVENT_PREFIX) :]))
            elif line.strip():
                self.say(f"  ({chef}'s worker) {line.rstrip()}")

    def on_event(self, event: dict[str, Any]) -> None:
        chef, at = event["chef"], event["at"]
        with self.lock:
            order = self.orders.get(event["order"])
        if order is None:
            return
        if event["event"] == "start":
            with self.lock:
                order.starts.append((chef, event["delivery"], at))
                if order.started_at is None:
                    order.started_at = at
            waited = at - order.ordered_at
            if event["delivery"] > 1 and self.crashed_at is not None:
                self.say(
                    f"{chef} takes over #{order.number}, {order.customer}'s {order.item} "
                    f"(delivery {event['delivery']}, {at - self.crashed_at:.1f} s after {VICTIM} fell)"
                )
            else:
                verb = "pours" if order.kind == "drink" else "starts"
                self.say(f"{chef} {verb} #{order.number}, {order.customer}'s {order.item} (waited {waited:.1f} s)")
            if (
                chef == VICTIM
                and order.kind == "pizza"
                and at - self.t0 >= CRASH_AFTER_SECONDS
                and self.crashed_at is None
            ):
                self.crash_armed.set()
        else:
            with self.lock:
                first = order.served_at is None
                if first:
                    order.served_at, order.served_by = at, chef
                done = all(o.served_at is not None for o in self.orders.values())
            if first and order.kind == "pizza":
                self.say(f"{chef} serves {order.customer} {_article(order.item)} {order.item} (#{order.number})")
            if done and self.ordering_done.is_set():
                self.all_served.set()

    def crash(self) -> None:
        """Wait for the victim to be mid-pizza, then kill him without warning."""
        if not self.crash_armed.wait(DEADLINE_SECONDS / 2):
            return
        time.sleep(1.0)  # well into the pizza
        proc = self.chefs[VICTIM]
        with self.lock:
            held = [
                o.number for o in self.orders.values() if o.starts and o.starts[-1][0] == VICTIM and o.served_at is None
            ]
        proc.send_signal(signal.SIGKILL)
        self.crashed_at = time.time()
        what = ", ".join(f"#{n} {self.orders[n].item}" for n in held) or "nothing"
        self.say(
            f"*** {VICTIM} collapses mid-pizza (SIGKILL: no goodbye, no ack). He held: {what}. "
            f"Nobody hears his heartbeat now: within {CHEF_HEARTBEAT_TIMEOUT} s the monitor declares him dead "
            f"and gives his orders to the others."
        )
        self.watch_victim(what)

    def watch_victim(self, held: str) -> None:
        """Follow the crashed chef's status as the server's monitor sees it."""
        consumer_id = self.chef_ids.get(f"chef {VICTIM}")
        assert self.crashed_at is not None
        seen = "alive"
        while consumer_id and seen != "dead" and time.time() < self.crashed_at + CHEF_HEARTBEAT_TIMEOUT + 10:
            time.sleep(0.1)
            status = next((c["status"] for c in self.client.consumers() if c["id"] == consumer_id), "dead")
            if status == seen:
                continue
            seen = status
            if status == "suspect":
                self.say(f"the monitor marks {VICTIM} suspect: his heartbeat is late")
            elif status == "dead":
                self.declared_dead_at = time.time()
                self.say(
                    f"the monitor declares {VICTIM} dead, {self.declared_dead_at - self.crashed_at:.1f} s after he fell: "
                    f"{held} is back in the queue now (its {ORDER_VISIBILITY_TIMEOUT} s lease would have kept it away)"
                )

    def send_home(self, *, signalled: bool = False) -> None:
        """Ask the chefs to finish and leave (SIGTERM: graceful). After a
        Ctrl-C they got the terminal's SIGINT already; a second signal
        would make them drop their work, so only wait then."""
        for proc in self.chefs.values():
            if proc.poll() is None and not signalled:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.chefs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the bill --------------------------------------------------------

    def report(self) -> int:
        orders = list(self.orders.values())
        lines = ["", "== The evening at the pizzeria =="]
        for kind in ("drink", "pizza"):
            mine = [o for o in orders if o.kind == kind]
            served = [o for o in mine if o.served_at is not None]
            lines.append(f"{kind + 's':8} ordered {len(mine):3}   served {len(served):3}")
        by_chef: dict[str, int] = {}
        for o in orders:
            if o.served_by:
                by_chef[o.served_by] = by_chef.get(o.served_by, 0) + 1
        lines.append("served by " + ", ".join(f"{c} {by_chef.get(c, 0)}" for c in CHEFS) + f" ({VICTIM} until he fell)")
        redelivered = [o for o in orders if any(d > 1 for _c, d, _t in o.starts)]
        back = ""
        if self.crashed_at and self.declared_dead_at:
            back = f" (back in the queue {self.declared_dead_at - self.crashed_at:.1f} s after the crash)"
        lines.append(f"redelivered {len(redelivered)}{back}")
        for o in redelivered:
            chef, _delivery, at = o.starts[-1]
            after = f", {at - self.crashed_at:.1f} s after the crash" if self.crashed_at else ""
            lines.append(f"  #{o.number} {o.customer}'s {o.item}: taken over by {chef}{after}")
        twice = [o for o in orders if len({c for c, _d, _t in o.starts}) > 1]
        lines.append(f"started twice {len(twice)} (only what {VICTIM} was making when he fell)")
        lines += ["", "waited (seconds)    order -> a chef starts    order -> served"]
        for kind in ("drink", "pizza"):
            to_start = [o.started_at - o.ordered_at for o in orders if o.kind == kind and o.started_at]
            to_serve = [o.served_at - o.ordered_at for o in orders if o.kind == kind and o.served_at]
            lines.append(f"  {kind + 's':8}          {_avg_max(to_start):24}  {_avg_max(to_serve)}")
        lost = [o for o in orders if o.served_at is None]
        lines.append("")
        if lost:
            lines.append(f"NOT served when the demo stopped: {', '.join(f'#{o.number}' for o in lost)}")
        else:
            lines.append("Every order was served; nothing was lost.")
        lines += [
            "Drinks (priority 5) jump ahead of waiting pizzas (priority 0), so they wait far less.",
            "While the demo runs, the dashboard shows the queue, the chefs (Luigi: suspect, then dead)",
            "and the redelivery live.",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        return 1 if lost else 0


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _avg_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"avg {sum(values) / len(values):4.1f}  max {max(values):4.1f}"


# --------------------------------------------------------------------------- #
# Entry point (`mq demo`)
# --------------------------------------------------------------------------- #


def run_demo(url: str, token: str | None, *, out: Output, seed: int | None = None) -> int:
    temporary = None
    if not token:
        from queues.models import Token

        temporary, token = Token.issue(f"demo-{int(time.time())}", ["admin"])
        out.write(f"(no --token or MQ_TOKEN: using a temporary admin token {temporary.key_id}, revoked at the end)\n")
    client = Client(url, token)
    try:
        try:
            client.put_queue(ORDERS, visibility_timeout=ORDER_VISIBILITY_TIMEOUT, max_deliveries=5)
            client.purge(ORDERS)  # leftovers of an earlier evening
        except OSError as exc:
            out.write(
                f"No mqadmin server at {url} ({exc}).\nStart one first (`make run` in another terminal), then run the demo again.\n"
            )
            return 1
        except MQError as exc:
            hint = (
                "is the server using this database? pass --token"
                if exc.status == 401
                else "the demo needs an admin token"
            )
            out.write(f"The server at {url} refused the demo: {exc} ({hint}).\n")
            return 1
        return _evening(client, url, token, out, random.Random(seed))
    finally:
        if temporary is not None:
            temporary.revoke()


def _evening(client: Any, url: str, token: str, out: Output, rng: random.Random) -> int:
    evening = Evening(client, out, rng)
    out.write(
        f"The pizzeria opens: queue {ORDERS!r} on {url}; chefs {', '.join(CHEFS)} (heartbeat timeout "
        f"{CHEF_HEARTBEAT_TIMEOUT} s, lease {ORDER_VISIBILITY_TIMEOUT} s).\nWatch it live: {url}/ (dashboard)\n\n"
    )
    evening.hire(url, token)
    _wait_for_chefs(client, evening)
    threading.Thread(target=evening.crash, daemon=True).start()
    threading.Thread(target=evening.customers, daemon=True).start()
    interrupted = False
    try:
        evening.all_served.wait(DEADLINE_SECONDS)
    except KeyboardInterrupt:
        interrupted = True
        evening.say("interrupted")
    evening.say("closing time: the chefs finish what they started and go home")
    evening.send_home(signalled=interrupted)
    return evening.report()


def _wait_for_chefs(client: Any, evening: Evening, timeout: float = 30.0) -> None:
    names = {f"chef {c}" for c in CHEFS}
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = {
            c["name"]: c["id"]
            for c in client.consumers()
            if c["name"] in names and c["status"] == "alive" and ORDERS in c["queues"] and c["in_flight"] == 0
        }
        if len(alive) == len(CHEFS) and all(p.poll() is None for p in evening.chefs.values()):
            evening.chef_ids = alive
            break
        time.sleep(0.3)
    evening.say("the chefs are in the kitchen")
