"""URL converters: how path parameters are parsed, once for every route."""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

from .schemas import MAX_ID  # ids are PostgreSQL `integer` columns


class IdConverter(IntegerConverter):
    """`<int:...>` in this app: an id in 1..2**31-1. Anything else does not match the route,
    so it answers 404 like an id that does not exist, instead of reaching the database (where
    2**31 and above overflow `integer`). flask-smorest documents the bounds in OpenAPI."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)
