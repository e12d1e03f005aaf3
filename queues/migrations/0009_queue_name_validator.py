"""A queue's name is checked by the one rule in ``queues.models``
(``validate_queue_name``), which also refuses "." and "..". Validators live
in Python only: the table does not change."""

from django.db import migrations, models

import queues.models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0008_claim_function_generic_plan"),
    ]

    operations = [
        migrations.AlterField(
            model_name="queue",
            name="name",
            field=models.CharField(max_length=80, unique=True, validators=[queues.models.validate_queue_name]),
        ),
    ]
