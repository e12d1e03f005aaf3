"""PostgreSQL: an ack deletes its messages in one pass (mq_ack), planned as
a primary-key probe per receipt, in the receipts' order (by id), whatever
the statistics say.

The ack used to lock each row first (a LATERAL probe ``FOR UPDATE``, then
the DELETE): a Heap LOCK record in the WAL per message beside its Heap
DELETE. The DELETE alone keeps the fence: it checks a row that changed
meanwhile again on its newest version (token and state included), so a
stale receipt still deletes nothing. But it takes its rows in its plan's
order, and as a plain statement that plan rests on the statistics:
PostgreSQL joined the receipts to a walk of the whole table up to about 600
pages (1.9 ms an ack of 100 at 5,000 messages, against 0.3 through the
primary key), in the table's order rather than by id (acks could then
deadlock with the statements that lock rows by id), and a generic plan made
while the table was small kept that walk after it grew. In the function,
sequential and bitmap scans, hash and merge joins are off, and the receipts
count as one row (the condition on ``r``): the nested loop over the
receipts, probing the primary key, is the cheapest plan at any table size.
One plan for every queue and call (``plan_cache_mode``); no JIT for a
statement this small.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION mq_ack(receipts jsonb, queue bigint)
RETURNS TABLE (id bigint, lease_token varchar, state varchar, origin_queue_id bigint)
LANGUAGE plpgsql VOLATILE ROWS 100
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan SET jit = off AS $$
BEGIN
    -- receipts: [[id, token], ...] sorted by id. "r ? (r ->> 1)" is always
    -- true (the token is an element of its pair); PostgreSQL cannot tell,
    -- takes it for a hundredth of the rows, so counts the receipts as one
    -- row: a single probe, cheaper than any walk of the table. The queue is
    -- checked on the probed row (queue_id + 0), not by probing its index.
    RETURN QUERY WITH acked AS (
        DELETE FROM queues_message m USING jsonb_array_elements(receipts) AS r
        WHERE r ? (r ->> 1) AND m.id = (r ->> 0)::bigint AND m.lease_token = r ->> 1
          AND m.queue_id + 0 = queue AND m.state IN ('in_flight', 'ready', 'delayed')
        RETURNING m.id, m.lease_token, m.state, m.origin_queue_id
    )
    SELECT * FROM acked;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS mq_ack(jsonb, bigint)"


def on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):

    dependencies = [
        ("queues", "0013_counter_deltas_without_constraint"),
    ]

    operations = [migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP))]
