"""Counter deltas without a foreign-key constraint or index on their queue.

Every send, claim and ack appends a delta; the constraint"s check locked the
queue"s row in each of them, so all of a queue"s producers and consumers
wrote that one row"s lock (``QueueStatsDelta.queue`` says more).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0012_message_claim_writes_fewer_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="queuestatsdelta",
            name="queue",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="queues.queue",
            ),
        ),
    ]
