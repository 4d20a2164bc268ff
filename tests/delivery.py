"""Outbox delivery with one registered handler swapped for a test's own (a failing one)."""

from __future__ import annotations

from crm_domain.services.delivery import outbox
from crm_domain.services.records import timeline


def timeline_handled_by(handler: outbox.BatchHandler) -> outbox.Registry:
    """The process's registry with `handler` in place of the timeline's."""
    registry = outbox.registry.copy()
    registry.replace(timeline.apply_activities, handler)
    return registry
