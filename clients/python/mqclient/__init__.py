"""mqclient: the Python client of mqadmin (standard library only).

Send::

    client = Client("http://127.0.0.1:8000", token)
    client.send("orders", {"pizza": "margherita"}, priority=0)

Consume (``handle`` raises to nack; the message is retried with backoff)::

    Worker(client, "orders", handle, concurrency=4).run()
"""

from __future__ import annotations

from .client import Client
from .errors import ConsumerDead, ConsumerNotFound, MQError
from .records import Message, Registration
from .stream import Publisher, Sent, Stream, StreamClosed
from .worker import Worker

__all__ = ["Client", "ConsumerDead", "ConsumerNotFound", "MQError", "Message", "Publisher", "Registration", "Sent", "Stream", "StreamClosed", "Worker"]
