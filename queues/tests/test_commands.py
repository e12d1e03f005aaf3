"""``python manage.py mq token|queue …`` (contract section 1)."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from conftest import Api
from queues import broker
from queues.models import Message, Queue, Token


def mq(*args: str) -> str:
    out = StringIO()
    call_command("mq", *args, stdout=out)
    return out.getvalue()


def create_token(name: str, scope: str, *extra: str) -> str:
    output = mq("token", "create", name, "--scope", scope, *extra)
    lines = output.strip().splitlines()
    return lines[-1]


# ------------------------------------------------------------------ tokens --


def test_token_create_prints_the_token_alone_on_the_last_line(db):
    raw = create_token("ci", "produce,consume,admin")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", raw), raw
    key_id, secret = raw.split(".")
    token = Token.objects.get(name="ci")
    assert token.key_id == key_id
    assert secret not in token.secret_hash and token.check_secret(secret)
    assert Api(raw).get("queues").status_code == 200


def test_token_scopes_and_queue_pattern_are_applied(db):
    raw = create_token("orders-producer", "produce", "--queues", "orders.*")
    broker.put_queue("orders.eu", {})
    broker.put_queue("billing", {})
    api = Api(raw)
    assert api.post("queues/orders.eu/messages", {"body": 1}).status_code == 201
    assert api.post("queues/billing/messages", {"body": 1}).status_code == 403
    assert api.post("queues/orders.eu/receive", {}).status_code == 403


def test_token_create_refuses_an_unknown_scope(db):
    with pytest.raises(CommandError):
        mq("token", "create", "x", "--scope", "produce,root")
    assert not Token.objects.exists()


def test_token_create_refuses_a_duplicate_name(db):
    create_token("ci", "admin")
    with pytest.raises(CommandError):
        mq("token", "create", "ci", "--scope", "admin")


def test_token_list_shows_key_ids_never_secrets(db):
    raw = create_token("ci", "consume")
    key_id, secret = raw.split(".")
    output = mq("token", "list")
    assert "ci" in output and key_id in output and "active" in output
    assert secret not in output


def test_token_revoke_makes_it_401(db):
    raw = create_token("ci", "admin")
    api = Api(raw)
    assert api.get("queues").status_code == 200
    mq("token", "revoke", "ci")
    assert api.get("queues").status_code == 401
    assert "revoked" in mq("token", "list")


def test_token_revoke_of_unknown_name_fails(db):
    with pytest.raises(CommandError):
        mq("token", "revoke", "nobody")


# ------------------------------------------------------------------ queues --


def test_queue_create_with_options(db):
    mq("queue", "create", "dlq")
    options = "--visibility-timeout 45 --max-deliveries 3 --dead-letter dlq --delay 2 --fifo --max-message-bytes 1000"
    mq("queue", "create", "jobs", *options.split())
    q = Queue.objects.get(name="jobs")
    assert (q.visibility_timeout, q.max_deliveries, q.delay, q.fifo, q.max_message_bytes) == (45, 3, 2, True, 1000)
    assert q.dead_letter_queue.name == "dlq"


def test_queue_create_of_an_existing_queue_fails(db):
    mq("queue", "create", "jobs")
    with pytest.raises(CommandError, match="exists"):
        mq("queue", "create", "jobs", "--visibility-timeout", "5")
    assert Queue.objects.get(name="jobs").visibility_timeout == 30


def test_queue_create_with_a_bad_name_or_dlq_fails(db):
    with pytest.raises(CommandError):
        mq("queue", "create", "bad name")
    with pytest.raises(CommandError):
        mq("queue", "create", "jobs", "--dead-letter", "nope")
    with pytest.raises(CommandError, match="visibility_timeout"):
        mq("queue", "create", "jobs", "--visibility-timeout", "999999")
    with pytest.raises(CommandError):
        mq("queue", "create", "jobs", "--max-deliveries", "-1")
    assert not Queue.objects.exists()


def test_queue_update_changes_only_the_given_settings(db):
    mq("queue", "create", "jobs", "--visibility-timeout", "5")
    mq("queue", "create", "dlq")
    assert "updated" in mq("queue", "update", "jobs", "--dead-letter", "dlq")
    jobs = Queue.objects.get(name="jobs")
    assert jobs.visibility_timeout == 5 and jobs.dead_letter_queue.name == "dlq"
    with pytest.raises(CommandError, match="No queue named 'nope'"):
        mq("queue", "update", "nope", "--delay", "1")
    assert not Queue.objects.filter(name="nope").exists()


def test_queue_update_refuses_a_dead_letter_cycle(db):
    mq("queue", "create", "dlq")
    mq("queue", "create", "jobs", "--dead-letter", "dlq")
    with pytest.raises(CommandError, match="dead-letter cycle: dlq → jobs → dlq"):
        mq("queue", "update", "dlq", "--dead-letter", "jobs")
    with pytest.raises(CommandError, match="dead-letter cycle: other → other"):
        mq("queue", "create", "other", "--dead-letter", "other")
    assert Queue.objects.get(name="dlq").dead_letter_queue is None


@pytest.mark.parametrize("name", [".", ".."])
def test_queue_create_refuses_dot_and_dot_dot(db, name):
    # As a URL path segment they mean "here" and "the parent": such a queue
    # could never be opened in the dashboard or addressed through the API.
    with pytest.raises(CommandError, match=r"not \. or \.\."):
        mq("queue", "create", name)
    assert not Queue.objects.exists()
    mq("queue", "create", "...")  # only the two exact names are refused
    assert Queue.objects.get().name == "..."


def test_token_revoke_of_a_revoked_token_fails(db):
    create_token("ci", "admin")
    mq("token", "revoke", "ci")
    revoked_at = Token.objects.get(name="ci").revoked_at
    with pytest.raises(CommandError, match="No active token"):
        mq("token", "revoke", "ci")
    assert Token.objects.get(name="ci").revoked_at == revoked_at


def test_queue_list_shows_counts(db):
    mq("queue", "create", "jobs")
    queue = broker.get_queue("jobs")
    broker.publish(queue, [broker.NewMessage(body=b"1") for _ in range(3)])
    broker.receive(queue)
    line = next(line for line in mq("queue", "list").splitlines() if line.startswith("jobs"))
    assert line.split()[1:5] == ["2", "0", "1", "0"]


def test_queue_list_when_empty(db):
    assert "no queues" in mq("queue", "list")


def test_queue_purge(db):
    mq("queue", "create", "jobs")
    queue = broker.get_queue("jobs")
    broker.publish(queue, [broker.NewMessage(body=b"1") for _ in range(4)])
    assert "4" in mq("queue", "purge", "jobs")
    assert Message.objects.count() == 0


def test_queue_purge_of_unknown_queue_fails(db):
    with pytest.raises(CommandError):
        mq("queue", "purge", "nope")


def test_queue_redrive_moves_dead_letters_home(db):
    mq("queue", "create", "dlq")
    mq("queue", "create", "jobs", "--max-deliveries", "1", "--dead-letter", "dlq")
    jobs = broker.get_queue("jobs")
    broker.publish(jobs, [broker.NewMessage(body=b"1") for _ in range(3)])
    for d in broker.receive(jobs, max_messages=3):
        broker.nack(jobs, [d.receipt])
    assert Message.objects.filter(queue__name="dlq").count() == 3
    assert "Moved 2" in mq("queue", "redrive", "dlq", "--max", "2")
    assert "Moved 1" in mq("queue", "redrive", "dlq")
    assert Message.objects.filter(queue__name="jobs", state="ready").count() == 3


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_queue_redrive_refuses_a_max_below_one(db, bad):
    mq("queue", "create", "jobs", "--max-deliveries", "1")
    jobs = broker.get_queue("jobs")
    broker.publish(jobs, [broker.NewMessage(body=b"1") for _ in range(2)])
    for d in broker.receive(jobs, max_messages=2):
        broker.nack(jobs, [d.receipt])
    with pytest.raises(CommandError, match="max"):
        mq("queue", "redrive", "jobs", "--max", bad)
    assert Message.objects.filter(state="dead").count() == 2


def test_the_models_and_the_migrations_agree(db):
    # A model change without its migration would reach users' databases
    # only as a surprise at their next `makemigrations`.
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)  # exits 1 on a missing migration
    assert "No changes detected" in out.getvalue()


# ---------------------------------------------------------------- operator --


def framed_password(output: str) -> str:
    """The password in the frame, checking the frame is the output's end."""
    lines = output.rstrip("\n").splitlines()
    assert lines[-1].startswith("+--") and lines[-1].endswith("-+")
    top = max(i for i, line in enumerate(lines[:-1]) if line.startswith("+--"))
    frame = lines[top:]
    assert frame[0] == frame[-1] and all(line.startswith("|") and line.endswith("|") for line in frame[1:-1])
    assert all(len(line) == len(frame[0]) for line in frame)
    body = "\n".join(frame)
    assert re.search(r"log in at\s+http://\S+:\d+/", body) and re.search(r"user\s+operator", body) and "mq operator --reset" in body
    return re.search(r"^\|\s+password\s+(\S+)", body, re.M).group(1)


def test_operator_prints_its_password_last_in_a_frame(db):
    from django.contrib.auth import authenticate

    password = framed_password(mq("operator"))
    user = authenticate(username="operator", password=password)
    assert user is not None and user.is_staff and user.is_superuser


def test_operator_again_says_how_to_get_a_new_password(db):
    mq("operator")
    out = mq("operator")
    assert "already exists" in out and "mq operator --reset" in out and "+--" not in out


def test_operator_reset_gives_a_new_password(db):
    from django.contrib.auth import authenticate

    old = framed_password(mq("operator"))
    new = framed_password(mq("operator", "--reset"))
    assert new != old
    assert authenticate(username="operator", password=old) is None
    assert authenticate(username="operator", password=new) is not None


def test_operator_reset_creates_the_account_when_missing(db):
    from django.contrib.auth import authenticate, get_user_model

    get_user_model().objects.create_superuser("alice", "", "pw-123456")
    password = framed_password(mq("operator", "--reset"))
    assert authenticate(username="operator", password=password).is_staff
