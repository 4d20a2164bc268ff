"""Publishing to the run's real broker (Redis, or RabbitMQ with TEST_CELERY_BROKER=amqp)
through a TCP proxy: a dropped connection is re-made by the next publish, and a broker that
is away costs outbox events no delivery attempt."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection, Queue
from sqlalchemy import select

from crm_domain.db import Database
from crm_domain.models import OutboxEvent
from crm_worker import dispatch
from crm_worker.broker import broker_config
from crm_worker.consumers import AnalyticsRefresh
from crm_worker.names import REFRESH_TASK
from crm_worker.publishing import TaskSender

from .api import ApiClient
from .tcpproxy import TcpProxy

pytestmark = pytest.mark.broker

TASK = "crm.test.publish_probe"  # no worker consumes this test's queue


@pytest.fixture
def queue_name(test_services) -> Iterator[str]:
    name = f"publish-test-{uuid.uuid4().hex[:8]}"
    yield name
    # (never declared if the test failed before its first publish)
    with Connection(test_services.broker_url) as conn, contextlib.suppress(Exception):
        Queue(name)(conn.default_channel).delete()


@pytest.fixture(autouse=True)
def _no_broker_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery prefers CELERY_BROKER_URL from the environment to its configuration."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)


def app_through(url: str, queue: str) -> Celery:
    app = Celery("publish-test", set_as_current=False)
    app.conf.update(**broker_config(url, [queue]), task_default_queue=queue)
    return app


def waiting_messages(broker_url: str, queue: str) -> int:
    with Connection(broker_url) as conn:
        return Queue(queue)(conn.default_channel).queue_declare(passive=True).message_count


def test_a_publish_after_the_broker_dropped_the_connection_reconnects(
    test_services, queue_name: str
) -> None:
    proxy, url = TcpProxy.to_url(test_services.broker_url)
    app = app_through(url, queue_name)
    try:
        publish = TaskSender(app)
        publish(TASK)
        connections = proxy.accepted
        assert proxy.cut() >= 2  # the pooled connection is gone; the client does not know yet
        publish(TASK)  # would raise "connection reset" without a retry
        assert proxy.accepted > connections
        assert waiting_messages(test_services.broker_url, queue_name) == 2
    finally:
        app.close()
        proxy.close()


def test_a_drain_that_finds_the_broker_away_costs_no_attempt(
    test_services, quiet_db: Database, api: ApiClient, queue_name: str
) -> None:
    user = api.register()
    deal = api.deal(user)
    proxy, url = TcpProxy.to_url(test_services.broker_url)
    app = app_through(url, queue_name)
    proxy.close()  # the broker is unreachable from here on

    def ask_for_refresh(organization_id: int) -> None:
        TaskSender(app)(REFRESH_TASK, args=[organization_id])

    with quiet_db.transaction() as s:
        s.execute(
            OutboxEvent.__table__.update()
            .where(OutboxEvent.organization_id == deal["organization_id"])
            .values(delivered_at=None, attempts=0)
        )
    try:
        with pytest.raises(dispatch.TRANSIENT_ERRORS):
            dispatch.Dispatcher().register(lambda: AnalyticsRefresh(ask_for_refresh)).deliver(
                quiet_db
            )
    finally:
        app.close()
    with quiet_db.transaction() as s:
        pending = s.execute(
            select(OutboxEvent.attempts, OutboxEvent.delivered_at).where(
                OutboxEvent.organization_id == deal["organization_id"]
            )
        ).all()
    assert pending and all(attempts == 0 and done is None for attempts, done in pending)
