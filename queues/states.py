"""The message state machine: every state a stored message can be in, and the
transitions the broker may make between them.

An acked message is not a state: it is deleted, so the hot table holds only
work that is still owed.
"""

from __future__ import annotations

from django.db import models


class MessageState(models.TextChoices):
    #: Waiting to be received; eligible for a claim now.
    READY = "ready", "Ready"
    #: Waiting for its ``visible_at`` (a send or nack delay); becomes READY then.
    DELAYED = "delayed", "Delayed"
    #: Leased to a consumer until ``lease_expires_at``; its receipt can ack it.
    IN_FLIGHT = "in_flight", "In flight"
    #: Delivered ``max_deliveries`` times without an ack and no dead-letter
    #: queue to move to; kept for inspection and redrive.
    DEAD = "dead", "Dead"


S = MessageState

#: Allowed transitions. ``None`` as a target means "deleted" (ack, purge).
TRANSITIONS: dict[MessageState, frozenset[MessageState | None]] = {
    # due delay passes -> READY; purge -> deleted; operator dead-letters
    S.DELAYED: frozenset({S.READY, S.DEAD, None}),
    # claim -> IN_FLIGHT; purge -> deleted; operator dead-letters
    S.READY: frozenset({S.IN_FLIGHT, S.DEAD, None}),
    # ack -> deleted; nack/expiry -> READY or DELAYED; too many deliveries -> DEAD
    # (or READY in the dead-letter queue); operator requeue -> READY
    S.IN_FLIGHT: frozenset({S.READY, S.DELAYED, S.DEAD, S.IN_FLIGHT, None}),
    # redrive / requeue -> READY; purge -> deleted
    S.DEAD: frozenset({S.READY, None}),
}

#: States whose messages still owe work: they take part in FIFO group order.
LIVE_STATES = (S.READY, S.DELAYED, S.IN_FLIGHT)


def can_transition(source: MessageState, target: MessageState | None) -> bool:
    return target in TRANSITIONS[source]
