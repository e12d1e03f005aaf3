"""mq_ready_head plans its query once, for every queue, and compiles nothing.

plpgsql keeps the plan of the function's query, and PostgreSQL weighs, at
every call, a generic plan against one made for the call's queue. With one
queue holding millions, the generic plan is costed for that queue's rows, so
it lost: every claim planned the query again. The function's plan is the same
for every queue (the claim index, in order, no sort: migration 0006), so it
now always takes the generic one (``plan_cache_mode``). On that plan the
estimate passes ``jit_above_cost``, and compiling it took 5-6 ms a claim for a
query that reads a handful of index entries: ``jit = off``. Both settings hold
inside the function only.
"""

from django.db import migrations

FUNCTION = "mq_ready_head(bigint, integer)"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER FUNCTION {FUNCTION} SET plan_cache_mode = force_generic_plan SET jit = off")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER FUNCTION {FUNCTION} RESET plan_cache_mode RESET jit")


class Migration(migrations.Migration):

    dependencies = [
        ("queues", "0007_message_consumer_index_partial"),
    ]

    operations = [migrations.RunPython(forward, backward)]
