"""Messages without foreign-key constraints on their queue, consumer and
origin queue.

PostgreSQL checks a foreign key with a query per row at commit (they were
deferred): for a send of 100, 100 lookups and locks of the queue's row, and
200 trigger events for the two that were NULL; a claim by a consumer, 100
lookups of the consumer. Together they cost a send more than its index
entries. Integrity is kept once a statement instead (``Message.queue``).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0015_message_without_enqueued_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="message",
            name="consumer",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="messages",
                to="queues.consumer",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="origin_queue",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="dead_lettered",
                to="queues.queue",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="queue",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="messages",
                to="queues.queue",
            ),
        ),
    ]
