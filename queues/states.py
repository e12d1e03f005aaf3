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

#: The states a message is created in: READY, or DELAYED when sent with a
#: delay, or IN_FLIGHT when a send hands it straight to a waiting receive
#: (its first delivery, leased in the send's own INSERT).
INITIAL_STATES: frozenset[MessageState] = frozenset({S.READY, S.DELAYED, S.IN_FLIGHT})

#: Allowed transitions of one broker operation, as its caller sees them.
#: ``None`` as a target means "deleted" (ack, purge, delete, retention). A
#: message that keeps its state while it changes otherwise (another queue,
#: a new lease) makes a transition to its own state. Every transition of
#: every operation is checked against this table by
#: ``queues/tests/test_states.py``.
TRANSITIONS: dict[MessageState, frozenset[MessageState | None]] = {
    # due delay passes -> READY; a receive promotes a due message and claims
    # it in the same call -> IN_FLIGHT; moved to another queue, delay kept
    # -> DELAYED; dead-lettered by hand -> DEAD (or READY in the dead-letter
    # queue); redriven or requeued -> READY; purged or expired -> deleted
    S.DELAYED: frozenset({S.READY, S.IN_FLIGHT, S.DELAYED, S.DEAD, None}),
    # claim -> IN_FLIGHT; moved to another queue (a move, a redrive or a
    # requeue home from a dead-letter queue, dead-lettered into one) ->
    # READY; dead-lettered by hand -> DEAD; purged or expired -> deleted
    S.READY: frozenset({S.IN_FLIGHT, S.READY, S.DEAD, None}),
    # ack -> deleted; nack/expiry/release -> READY or DELAYED; too many
    # deliveries -> DEAD (or READY in the dead-letter queue); lease extended
    # -> IN_FLIGHT; operator requeue or move -> READY
    S.IN_FLIGHT: frozenset({S.READY, S.DELAYED, S.DEAD, S.IN_FLIGHT, None}),
    # redrive / requeue / move -> READY; purged or expired -> deleted
    S.DEAD: frozenset({S.READY, None}),
}

#: States whose messages still owe work: they take part in FIFO group order.
LIVE_STATES = (S.READY, S.DELAYED, S.IN_FLIGHT)


def can_transition(source: MessageState, target: MessageState | None) -> bool:
    return target in TRANSITIONS[source]
