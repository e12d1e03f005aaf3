"""The models' own rules: the queue-name rule."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from queues import broker
from queues.exceptions import InvalidValue
from queues.models import Queue, is_queue_name, validate_queue_name

# ------------------------------------------------------------ queue names --


@pytest.mark.parametrize("name", ["a", "A-Z_0.9", "x" * 80, "orders.v2", "-", "...", ".hidden", "a.."])
def test_queue_names_that_are_allowed(name: str) -> None:
    assert is_queue_name(name)
    validate_queue_name(name)


@pytest.mark.parametrize("name", [".", "..", "", "x" * 81, "has space", "ümlaut", "a/b", "x\n", ".\n"])
def test_queue_names_that_are_refused(name: str) -> None:
    assert not is_queue_name(name)
    with pytest.raises(ValidationError):
        validate_queue_name(name)


@pytest.mark.parametrize("name", [".", ".."])
def test_the_queue_model_refuses_dot_and_dot_dot(db: None, name: str) -> None:
    # The admin's form and broker.put_queue both validate through the model.
    with pytest.raises(ValidationError) as caught:
        Queue(name=name).full_clean()
    assert "name" in caught.value.message_dict
    with pytest.raises(InvalidValue, match=r"not \. or \.\."):
        broker.put_queue(name, {})
    assert not Queue.objects.exists()
