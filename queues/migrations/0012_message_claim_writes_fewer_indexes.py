"""A claim writes 3 index entries a message instead of 5.

A claim changes a row's state and lease, so on PostgreSQL its new row
version gets an entry in every index whose condition it meets. mq_msg_state
and mq_msg_enqueued now leave in-flight rows out (no query needs them there:
mq_msg_lease serves those), and mq_msg_lease leads with the queue, so that a
receive can find its own queue's lapsed leases. Each index is built
CONCURRENTLY beside the old one and swapped in, so a busy queue keeps taking
writes meanwhile.

SQLite rewrites only the index entries whose columns change, so leaving
in-flight rows out would save nothing there, and its planner uses a partial
index only when a query repeats the index's condition: mq_msg_state and
mq_msg_enqueued stay whole on SQLite.
"""

from django.db import migrations, models
from django.db.models import Q

NOT_LEASED = ~Q(state="in_flight")

# name: (old index, new index, PostgreSQL columns and condition of the new one, also on SQLite?)
SWAPS = {
    "mq_msg_state": (
        models.Index(fields=["queue", "state", "id"], name="mq_msg_state"),
        models.Index(fields=["queue", "state", "id"], condition=NOT_LEASED, name="mq_msg_state"),
        "(queue_id, state, id) WHERE state <> 'in_flight'",
        False,
    ),
    "mq_msg_enqueued": (
        models.Index(fields=["enqueued_at"], name="mq_msg_enqueued"),
        models.Index(fields=["enqueued_at"], condition=NOT_LEASED, name="mq_msg_enqueued"),
        "(enqueued_at) WHERE state <> 'in_flight'",
        False,
    ),
    "mq_msg_lease": (
        models.Index(fields=["lease_expires_at"], condition=Q(state="in_flight"), name="mq_msg_lease"),
        models.Index(fields=["queue", "lease_expires_at"], condition=Q(state="in_flight"), name="mq_msg_lease"),
        "(queue_id, lease_expires_at) WHERE state = 'in_flight'",
        True,
    ),
}
# The old definitions, for going back.
OLD_SQL = {
    "mq_msg_state": "(queue_id, state, id)",
    "mq_msg_enqueued": "(enqueued_at)",
    "mq_msg_lease": "(lease_expires_at) WHERE state = 'in_flight'",
}


def swap(backwards: bool):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        message = apps.get_model("queues", "Message")
        for name, (old, new, new_sql, on_sqlite) in SWAPS.items():
            if backwards:
                old, new, new_sql = new, old, OLD_SQL[name]
            if schema_editor.connection.vendor != "postgresql":
                if on_sqlite:
                    schema_editor.remove_index(message, old)
                    schema_editor.add_index(message, new)
                continue
            table = message._meta.db_table
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_next")  # a build that failed midway
            schema_editor.execute(f"CREATE INDEX CONCURRENTLY {name}_next ON {table} {new_sql}")
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            schema_editor.execute(f"ALTER INDEX {name}_next RENAME TO {name}")

    return run


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("queues", "0011_message_group_slot"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(swap(False), swap(True))],
            state_operations=[
                op
                for name, (_old, new, _sql, _sqlite) in SWAPS.items()
                for op in (
                    migrations.RemoveIndex(model_name="message", name=name),
                    migrations.AddIndex(model_name="message", index=new),
                )
            ],
        ),
    ]
