"""Page requests and pages of results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.page_size) if self.total else 0


def paginate(session: Session, stmt: Select[T], request: PageRequest) -> Page[T]:
    """Run `stmt` (already filtered and ordered) for one page, plus the total count."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items: Sequence[T] = []
    if request.offset < total:
        items = session.scalars(stmt.limit(request.page_size).offset(request.offset)).all()
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)
