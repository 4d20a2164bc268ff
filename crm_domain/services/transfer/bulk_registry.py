"""What a bulk action may do: for each action (update, delete, later restore) and entity
(contact, deal, task), the per-record function. Each is the very service function a single
PATCH or DELETE calls, so a record in a bulk action meets the same rules (ownership, the won
amount, stage rollbacks...) and records the same timeline entries and domain events.

Adding an action is one line per entity here (as `restore` was, with the trash); the API's
enum of actions is read from this registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema
from sqlalchemy.orm import Session

from ...context import Actor
from ...models import Contact, Deal, Task
from ...validation.writes import ContactUpdateSchema, DealUpdateSchema, TaskUpdateSchema
from ..records import contacts, deals, tasks, trash

# (session, actor, record id, changes) -> anything; raises a DomainError to refuse the record.
RecordAction = Callable[[Session, Actor, int, dict[str, Any]], object]


@dataclass(frozen=True)
class Entity:
    model: type[Any]
    changes: type[Schema]  # what an update may carry: the single PATCH's body schema


ENTITIES: dict[str, Entity] = {
    "contact": Entity(Contact, ContactUpdateSchema),
    "deal": Entity(Deal, DealUpdateSchema),
    "task": Entity(Task, TaskUpdateSchema),
}
TAKES_CHANGES = frozenset({"update"})  # the other actions take none
# Records named by id only: a list's filter shows live records, never the trash.
IDS_ONLY = frozenset({"restore"})


class Registry:
    """action -> entity -> per-record function."""

    def __init__(self) -> None:
        self._actions: dict[str, dict[str, RecordAction]] = {}

    def on(self, action: str, entity: str, apply: RecordAction) -> None:
        assert entity in ENTITIES, entity
        self._actions.setdefault(action, {})[entity] = apply

    def names(self) -> list[str]:
        return sorted(self._actions)

    def get(self, action: str, entity: str) -> RecordAction | None:
        return self._actions.get(action, {}).get(entity)


actions = Registry()
actions.on("update", "contact", contacts.update_contact)
actions.on("update", "deal", deals.update_deal)
actions.on("update", "task", tasks.update_task)
actions.on(
    "delete", "contact", lambda s, actor, record_id, _: contacts.delete_contact(s, actor, record_id)
)
actions.on("delete", "deal", lambda s, actor, record_id, _: deals.delete_deal(s, actor, record_id))
actions.on("delete", "task", lambda s, actor, record_id, _: tasks.delete_task(s, actor, record_id))
actions.on(
    "restore",
    "contact",
    lambda s, actor, record_id, _: trash.restore(s, actor, "contact", record_id),
)
actions.on(
    "restore", "deal", lambda s, actor, record_id, _: trash.restore(s, actor, "deal", record_id)
)
actions.on(
    "restore", "task", lambda s, actor, record_id, _: trash.restore(s, actor, "task", record_id)
)
