"""The broker's SQL on SQLite: the embedded default, one process.

Under ``BEGIN IMMEDIATE`` a SQLite transaction is the only writer: the rows
it reads cannot change under it, so no lock clause is needed (or accepted),
and a claim reads its rows without skipping any. Wake-ups stay in the one
process (``queues.notify``).
"""

from __future__ import annotations

from .common import Statements


class SQLite(Statements):
    postgres = False
    random_token = "lower(hex(randomblob(16)))"
