"""Messages lose mq_msg_enqueued: every send wrote an entry in it (and,
until 0012, every claim). Retention walks the queue's ids instead, which are
handed out in enqueue order (``maintenance._too_old``), and the admin's age
column sorts by id."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("queues", "0014_ack_function"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="message",
            name="mq_msg_enqueued",
        ),
    ]
