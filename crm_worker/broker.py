"""Celery's broker: Redis (the default) or RabbitMQ, and how each declares the queues.

CELERY_BROKER_URL picks the broker (default: REDIS_URL). Redis remains the analytics store,
the list-total cache, the rate-limit store and the outbox drain flag with either broker.

On RabbitMQ (amqp://, amqps://, pyamqp://) every queue is a quorum queue (replicated,
durable, a poison message is dropped after repeated redeliveries instead of looping) bound
to a topic exchange of its own name:
- publishes wait for the broker's confirmation (`confirm_publish`), so a message the API or
  a worker handed over is on the broker's disk, not in a socket buffer;
- quorum queues have no global QoS, so Celery turns on its native delayed delivery for
  countdowns and retries (the message waits in the broker's `celery_delayed_*` queues, not
  in a worker's memory). That routes through topic exchanges: a direct exchange would make
  Celery fall back to holding the ETA task in the worker. The delay counts whole seconds,
  and Celery refuses a countdown under one second there (`countdown()` rounds up: the
  analytics refresh waits 1 s instead of 0.3 s);
- the worker needs no visibility timeout: an unacknowledged message goes back to the queue
  the moment the worker's connection drops (SIGKILL included).

On Redis the queues are plain lists; `visibility_timeout` (1 h) is how long an unacknowledged
task (acks_late) waits before another worker gets it after its worker died."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
QUORUM = {"x-queue-type": "quorum"}


def is_amqp(url: str) -> bool:
    return url.partition("://")[0].lower() in AMQP_SCHEMES


def broker_config(url: str, queues: Iterable[str]) -> dict[str, Any]:
    """Celery settings for the broker at `url` declaring `queues`."""
    names = list(dict.fromkeys(queues))
    if is_amqp(url):
        return {
            "broker_url": url,
            "task_queues": [
                Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments=QUORUM)
                for name in names
            ],
            "task_default_exchange_type": "topic",
            "task_default_queue_type": "quorum",
            "task_create_missing_queue_type": "quorum",
            "task_create_missing_queue_exchange_type": "topic",
            "broker_transport_options": {"confirm_publish": True},
        }
    return {
        "broker_url": url,
        "task_queues": [Queue(name) for name in names],
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
    }


def countdown(url: str, seconds: float) -> float:
    """A countdown the broker at `url` can keep. RabbitMQ's native delayed delivery counts
    whole seconds, and Celery 5.7 raises "countdown must be a positive number" for one
    under a second there (`int(0.3) == 0`): rounded up on AMQP, unchanged on Redis."""
    if is_amqp(url) and seconds > 0:
        return float(math.ceil(seconds))
    return seconds
