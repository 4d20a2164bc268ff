"""Page requests and pages of results: page numbers, or keyset cursors.

Page mode (`page`, `page_size`) counts the matches and reads one page. A shallow page of a
list the count cache (crm_domain.counting) has seen small does both in one statement: up to
`WINDOW_BELOW` rows the page's own scan counts them (`count(*) OVER ()`, one pass, but every
matching row is read and kept until the first one is returned); above, the statement carries a
count of the keys alone as a scalar subquery (run once, over only the filter columns' index
and the rows' visibility) next to a page that reads only its rows. A large list's total comes
from that cache, and deep pages read ids first (index-only), then the rows.
Cursor mode (`cursor` from a previous `next_cursor`) seeks straight to the position after the
last row seen: no count, no offset, the same cost on page 1 and page 5,000. Every page
carries `next_cursor` while more rows follow."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from .errors import ValidationFailed

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# From this offset on a page reads ids first (index-only), then the page's rows.
DEEP_PAGE_OFFSET = 10 * MAX_PAGE_SIZE
# Up to this many rows (the list's last total) a shallow page counts in its own scan
# (`count(*) OVER ()`); above, with a count of the keys beside it. PostgreSQL time per page
# (docs/PERFORMANCE.md, "Bulk actions"): 10,000 deals 4.6 against 1.6 ms, 2,000 1.1 against
# 0.6 ms, 500 the same; a rare match in a large tenant favours the one scan.
WINDOW_BELOW = 1_000


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    total: int | None
    page: int | None
    page_size: int
    next_cursor: str | None = None

    @property
    def pages(self) -> int | None:
        if self.total is None:
            return None
        return math.ceil(self.total / self.page_size) if self.total else 0


@dataclass(frozen=True)
class Ordering:
    """The sort of a list: one column (then the primary key as tie-breaker), one direction.

    `name` goes into cursors, so a cursor is refused under another sort."""

    name: str
    column: InstrumentedAttribute[Any]
    key: InstrumentedAttribute[Any]
    descending: bool = True

    def clauses(self) -> list[Any]:
        if self.column is self.key:
            return [self.key.desc() if self.descending else self.key.asc()]
        if self.descending:
            return [self.column.desc(), self.key.desc()]
        return [self.column.asc(), self.key.asc()]

    def values_of(self, item: Any) -> list[Any]:
        if self.column is self.key:
            return [getattr(item, self.key.key)]
        return [getattr(item, self.column.key), getattr(item, self.key.key)]

    def after(self, values: list[Any]) -> Any:
        """The keyset condition: rows strictly after `values` in this order."""
        columns = [self.key] if self.column is self.key else [self.column, self.key]
        left = columns[0] if len(columns) == 1 else tuple_(*columns)
        right = values[0] if len(values) == 1 else tuple_(*values)
        return left < right if self.descending else left > right

    def _types(self) -> list[type]:
        columns = [self.key] if self.column is self.key else [self.column, self.key]
        return [c.type.python_type for c in columns]

    def encode(self, item: Any) -> str:
        values = [_to_json(v) for v in self.values_of(item)]
        raw = json.dumps({"o": self.signature, "k": values}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, cursor: str) -> list[Any]:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            if not isinstance(data, dict) or not isinstance(data.get("k"), list):
                raise ValueError("not a cursor")
            if data.get("o") != self.signature:
                raise ValidationFailed(
                    "The cursor belongs to another sort order; start again without it",
                    code="INVALID_CURSOR",
                )
            types = self._types()
            if len(data["k"]) != len(types):
                raise ValueError("wrong number of values")
            return [_from_json(v, t) for v, t in zip(data["k"], types, strict=True)]
        except ValidationFailed:
            raise
        except (ValueError, TypeError, binascii.Error, InvalidOperation, UnicodeDecodeError) as exc:
            raise ValidationFailed("Invalid cursor", code="INVALID_CURSOR") from exc

    @property
    def signature(self) -> str:
        return f"{self.name}:{'desc' if self.descending else 'asc'}"


def _to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _from_json(value: Any, python_type: type) -> Any:
    if python_type is dt.datetime:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed
    if python_type is dt.date:
        return dt.date.fromisoformat(value)
    if python_type is Decimal:
        number = Decimal(value)
        if not number.is_finite() or abs(number) >= 10**15:
            raise ValueError("amount out of range")
        return number
    if python_type is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
            raise ValueError("not an integer")
        return value
    return python_type(value)


def _count(session: Session, rows: Select[Any], shape: Any = None) -> int:
    """Exact, or through the session's count cache (see crm_domain.counting) when it has one;
    `shape` is the cache's shape(rows) when the caller has it."""
    counter = session.info.get("count_cache")
    if counter is not None:
        return int(counter.count(session, rows, shape=shape))
    return session.scalar(select(func.count()).select_from(rows.subquery())) or 0


def _page_and_total(
    session: Session, stmt: Select[Any], keys: Select[Any], shape: Any, request: PageRequest
) -> tuple[list[Any], int] | None:
    """A shallow page of a list the count cache knows to be small (`shape`: its shape of
    `keys`), and its total, from one statement. None when the list is not known small: count,
    then read."""
    counter = session.info.get("count_cache")
    if counter is None or request.offset >= DEEP_PAGE_OFFSET:
        return None
    last = counter.small_total(shape)
    if last is None:
        return None
    if last <= WINDOW_BELOW:
        total: Any = func.count().over()
    else:
        capped = keys.limit(counter.exact_below + 1).subquery()
        total = select(func.count()).select_from(capped).scalar_subquery()
    rows = session.execute(
        stmt.add_columns(total).limit(request.page_size).offset(request.offset)
    ).all()
    if rows and rows[0][1] <= counter.exact_below:
        counter.saw(shape, int(rows[0][1]))
        return [row[0] for row in rows], int(rows[0][1])
    if not rows and request.offset == 0:
        counter.saw(shape, 0)
        return [], 0
    # Past the end (no row carries the total), or grown large: counted (and re-classified).
    return [row[0] for row in rows], _count(session, keys, shape)


def paginate(
    session: Session, stmt: Select[Any], request: PageRequest, ordering: Ordering
) -> Page[Any]:
    """Run `stmt` (filtered, not yet ordered) for one page in `ordering`."""
    stmt = stmt.order_by(*ordering.clauses())
    size = request.page_size
    if request.cursor is not None:
        after = ordering.decode(request.cursor)
        rows = list(session.scalars(stmt.where(ordering.after(after)).limit(size + 1)))
        seen = rows[:size]
        next_cursor = ordering.encode(seen[-1]) if len(rows) > size and seen else None
        return Page(items=seen, total=None, page=None, page_size=size, next_cursor=next_cursor)

    keys = stmt.with_only_columns(ordering.key).order_by(None)
    counter = session.info.get("count_cache")
    shape = counter.shape(keys) if counter is not None else None  # once per request
    shallow = _page_and_total(session, stmt, keys, shape, request)
    if shallow is not None:
        return _page(*shallow, request, ordering)
    total = _count(session, keys, shape)
    items = []
    if request.offset < total:
        if request.offset >= DEEP_PAGE_OFFSET:
            # Deep page: skip over index entries only, then read the page's rows.
            ids = stmt.with_only_columns(ordering.key).limit(size).offset(request.offset)
            page_stmt = stmt.where(ordering.key.in_(ids.scalar_subquery()))
            items = list(session.scalars(page_stmt))
        else:
            items = list(session.scalars(stmt.limit(size).offset(request.offset)))
    return _page(items, total, request, ordering)


def _page(items: list[Any], total: int, request: PageRequest, ordering: Ordering) -> Page[Any]:
    more = request.offset + len(items) < total
    next_cursor = ordering.encode(items[-1]) if more and items else None
    return Page(
        items=items,
        total=total,
        page=request.page,
        page_size=request.page_size,
        next_cursor=next_cursor,
    )
