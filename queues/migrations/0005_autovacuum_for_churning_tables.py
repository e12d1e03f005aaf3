"""PostgreSQL: vacuum the tables that churn early and often.

Every message is inserted, updated at least once (claimed) and deleted (acked);
counter deltas are inserted and deleted once a second by the monitor; dedup
keys expire in bulk. PostgreSQL's defaults wait until 20 % of a table is dead
before vacuuming it, so a busy queue's table would bloat to several times its
live size between vacuums, and the claim would wade through dead index entries.
These thresholds are absolute (a few thousand dead rows), as queue tables in
PGMQ, Oban and River deployments are tuned. SQLite has nothing to tune.
"""

from django.db import migrations

SETTINGS = {
    "queues_message": (
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000, "
        "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000, "
        "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0"
    ),
    "queues_queuestatsdelta": (
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0"
    ),
    "queues_dedupkey": "autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 5000",
}
RESET = {
    table: ", ".join(part.split("=")[0].strip() for part in params.split(","))
    for table, params in SETTINGS.items()
}


def tune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, params in SETTINGS.items():
        schema_editor.execute(f"ALTER TABLE {table} SET ({params})")


def untune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, params in RESET.items():
        schema_editor.execute(f"ALTER TABLE {table} RESET ({params})")


class Migration(migrations.Migration):

    dependencies = [
        ("queues", "0004_message_fewer_indexes"),
    ]

    operations = [migrations.RunPython(tune, untune)]
