"""The Django admin for operators: inspect queues, messages, consumers and
tokens, and put messages back to work by hand.

One module per model admin. Every action calls ``queues.broker`` (the code
the API runs), inside one transaction together with the ``LogEntry`` that
records it, and reports with ``message_user``.
"""

# Importing the modules registers their model admins with the admin site.
from . import consumers, messages, queues, tokens

__all__ = ["consumers", "messages", "queues", "tokens"]
