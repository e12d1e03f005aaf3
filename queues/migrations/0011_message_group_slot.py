"""Messages carry their FIFO group's slot (``queues.hashing.slot_of``), the
unit of ownership among a queue's consumers, and mq_msg_slot finds a slot's
ready messages. The messages already stored get theirs here: the same
number, computed in SQL on PostgreSQL and by the same Python on SQLite;
messages without a group get -1 in a FIFO queue and stay NULL in a standard
one. Frozen copies: the migration must give what ``slot_of`` gave when it
was written, whatever that module becomes."""

import hashlib

import django.db.models
from django.db import migrations, models

SLOTS = 4096
SLOT_SQL_POSTGRESQL = f"('x' || substr(md5(group_key), 1, 4))::bit(16)::int % {SLOTS}"


def slot_of(group):
    return int.from_bytes(hashlib.md5(group.encode(), usedforsecurity=False).digest()[:2], "big") % SLOTS


def backfill(connection):
    """Every grouped message's slot, and -1 for the others in FIFO queues."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            slot = SLOT_SQL_POSTGRESQL
        else:
            connection.connection.create_function("mq_slot_of", 1, slot_of, deterministic=True)
            slot = "mq_slot_of(group_key)"
        cur.execute(f"UPDATE queues_message SET group_slot = {slot} WHERE group_key <> ''")
        cur.execute(
            "UPDATE queues_message SET group_slot = -1 WHERE group_key = '' "
            "AND queue_id IN (SELECT id FROM queues_queue WHERE fifo)"
        )


def forward(apps, schema_editor):
    backfill(schema_editor.connection)


class Migration(migrations.Migration):

    dependencies = [
        ("queues", "0010_consumer_status_left"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="group_slot",
            field=models.SmallIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(forward, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=django.db.models.Q(("group_slot__isnull", False), ("state", "ready")),
                fields=["queue", "group_slot", "-priority", "id"],
                name="mq_msg_slot",
            ),
        ),
    ]
