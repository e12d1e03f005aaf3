"""mq_msg_consumer holds only messages a consumer holds.

Every new message, and every claim without a consumer, wrote a NULL entry
into it: on the 2-core machine about 0.12 ms of each 1.4 ms insert of 100
messages. On PostgreSQL the new index is built CONCURRENTLY beside the old
one and then swapped in, so a busy queue keeps taking writes meanwhile.
"""

from django.db import migrations, models
from django.db.models import Q

OLD = models.Index(fields=["consumer"], name="mq_msg_consumer")
NEW = models.Index(fields=["consumer"], condition=Q(consumer__isnull=False), name="mq_msg_consumer")


def swap(old: models.Index, new: models.Index):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        message = apps.get_model("queues", "Message")
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.remove_index(message, old)
            schema_editor.add_index(message, new)
            return
        table = message._meta.db_table
        where = "WHERE consumer_id IS NOT NULL" if new.condition is not None else ""
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS mq_msg_consumer_next")  # a build that failed midway
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY mq_msg_consumer_next ON {table} (consumer_id) {where}")
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS mq_msg_consumer")
        schema_editor.execute("ALTER INDEX mq_msg_consumer_next RENAME TO mq_msg_consumer")

    return run


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("queues", "0006_claim_function"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(swap(OLD, NEW), swap(NEW, OLD))],
            state_operations=[
                migrations.RemoveIndex(model_name="message", name="mq_msg_consumer"),
                migrations.AddIndex(model_name="message", index=NEW),
            ],
        ),
    ]
