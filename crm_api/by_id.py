"""The single-resource view (`GET`/`PATCH`/`DELETE /<things>/<id>`) shared by contacts, deals
and tasks: an ETag on every representation, `If-None-Match` → 304, `If-Match` checked against
the locked row before a change (412 on a mismatch); see crm_api.conditional."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask.views import MethodView
from sqlalchemy.orm import Session

from crm_domain.context import Actor

from .conditional import precondition, with_etag
from .extensions import Blueprint, current_actor, transaction

Getter = Callable[[Session, Actor, int], Any]
Updater = Callable[[Session, Actor, int, dict[str, Any], Any], Any]
Deleter = Callable[[Session, Actor, int, Any], None]


@dataclass(frozen=True)
class ByIdDocs:
    """The operations' summaries/descriptions (first line = summary) and extra responses."""

    get: str
    patch: str
    delete: str
    delete_conflict: str | None = None  # a 409 the delete can answer
    extra: dict[str, Any] = field(default_factory=dict)


def register_by_id(
    blp: Blueprint,
    *,
    id_name: str,
    schema: Any,
    update_schema: Any,
    get: Getter,
    update: Updater,
    delete: Deleter,
    docs: ByIdDocs,
) -> type[MethodView]:
    """Add `/<int:{id_name}>` with GET, PATCH and DELETE to `blp`."""
    dumper = schema() if isinstance(schema, type) else schema

    def get_one(self: Any, **path: int) -> Any:
        with transaction() as session:
            return with_etag(get(session, current_actor(), path[id_name]), dumper)

    def patch_one(self: Any, data: dict[str, Any], **path: int) -> Any:
        with transaction() as session:
            obj = update(session, current_actor(), path[id_name], data, precondition(dumper))
            return with_etag(obj, dumper)

    def delete_one(self: Any, **path: int) -> None:
        with transaction() as session:
            delete(session, current_actor(), path[id_name], precondition(dumper))

    get_one.__doc__, patch_one.__doc__, delete_one.__doc__ = docs.get, docs.patch, docs.delete
    not_found = {"description": "Not found in this organization"}

    get_view = blp.tenant_required(
        blp.response(200, schema)(blp.alt_response(404, **not_found)(blp.conditional(get_one)))
    )
    patch_view = blp.tenant_required(
        blp.arguments(update_schema)(
            blp.response(200, schema)(
                blp.alt_response(404, **not_found)(blp.conditional(patch_one))
            )
        )
    )
    deleting = blp.conditional(delete_one)
    if docs.delete_conflict:
        deleting = blp.alt_response(409, description=docs.delete_conflict)(deleting)
    delete_view = blp.tenant_required(
        blp.response(204)(blp.alt_response(404, **not_found)(deleting))
    )
    view = type(
        f"{blp.name.capitalize()}ById",
        (MethodView,),
        {"get": get_view, "patch": patch_view, "delete": delete_view},
    )
    return blp.route(f"/<int:{id_name}>")(view)  # type: ignore[no-any-return]
