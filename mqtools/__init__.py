"""Tools that drive a running mqadmin from outside: the benchmark
(``mq bench``), the pizzeria demo (``mq demo``), the chaos run
(``python -m mqtools.chaos``), the soak (``python -m mqtools.soak``), and
``procs``, which starts and stops the server processes they and the tests
use.

The app (``queues``, ``dashboard``, ``mqadmin``) never imports this package;
only the ``mq bench`` and ``mq demo`` verbs do, inside the verb.
"""
