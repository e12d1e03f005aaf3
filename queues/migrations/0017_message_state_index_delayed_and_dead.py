"""A send of ready messages writes 3 index entries a message instead of 4.

mq_msg_state now holds only delayed and dead rows on PostgreSQL: ready rows
are found through mq_msg_claim (``MessageQuerySet.ready_in_id_order``) and
in-flight ones through mq_msg_lease. The index is built CONCURRENTLY beside
the old one and swapped in, as in 0012, so a busy queue keeps taking writes
meanwhile.

On SQLite mq_msg_state is whole, as 0012 meant it to stay: SQLite rewrites
only the index entries whose columns change, and its planner uses a partial
index only when a query repeats the index's condition. 0016 remade the table
there, and with it this index from the model's definition (leaving in-flight
rows out): it is made whole again.
"""

from django.db import migrations, models
from django.db.models import Q

NAME = "mq_msg_state"
NEW = models.Index(fields=["queue", "state", "id"], condition=Q(state__in=["delayed", "dead"]), name=NAME)
NEW_SQL = "(queue_id, state, id) WHERE state IN ('delayed', 'dead')"
OLD_SQL = "(queue_id, state, id) WHERE state <> 'in_flight'"


def swap(backwards: bool):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        table = apps.get_model("queues", "Message")._meta.db_table
        if schema_editor.connection.vendor != "postgresql":
            if not backwards:
                schema_editor.execute(f"DROP INDEX IF EXISTS {NAME}")
                schema_editor.execute(f"CREATE INDEX {NAME} ON {table} (queue_id, state, id)")
            return
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}_next")  # a build that failed midway
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY {NAME}_next ON {table} {OLD_SQL if backwards else NEW_SQL}")
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")
        schema_editor.execute(f"ALTER INDEX {NAME}_next RENAME TO {NAME}")

    return run


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("queues", "0016_message_without_constraints"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(swap(False), swap(True))],
            state_operations=[
                migrations.RemoveIndex(model_name="message", name=NAME),
                migrations.AddIndex(model_name="message", index=NEW),
            ],
        ),
    ]
