"""Rows a transaction writes as it commits: queued on the session while the change runs, and
inserted right before the outermost COMMIT, every table's rows in one statement (the first
table's INSERT, the others' as data-modifying CTEs of it: one round trip however many events
and audit entries a change made); past MANY_ROWS (a bulk action's batch), one executemany
per table.

The outbox's events and the audit log's entries are written this way: rows that nothing
reads inside the transaction that writes them. A rolled-back transaction takes its queue
with it; a rolled-back savepoint (`begin_nested`) takes exactly the rows queued since it
began (savepoints nest and rows are queued in order, so each savepoint only remembers how
many rows were queued before it). `committed(session)` tells, after the commit, how many
rows of each table it wrote (the outbox announces its events from it).

The listeners act on the session's own transaction, never on a SAVEPOINT: SQLAlchemy fires
its commit and rollback events for savepoints too. Rows are inserted at the outermost commit
only (inserting them at a savepoint's release would put rows queued before an enclosing
savepoint inside it, to be rolled back with it). Session.commit() releases open savepoints
before the outermost commit; close them first when committing a SessionTransaction directly."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, bindparam, event, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, SessionTransaction

_QUEUE = "crm_commit_rows"  # [(model, row), ...] in the order they were queued
_SAVEPOINTS = "crm_commit_rows_savepoints"  # {open savepoint: rows queued before it}
_COMMITTED = "crm_commit_rows_committed"  # {table name: rows the last commit inserted}
# Past this many rows (a bulk action's batch: 800), each table's rows are inserted by an
# executemany of their own instead: a statement compiled once and cached, sent in pages
# (insertmanyvalues), where compiling one literal VALUES of them all took 0.3 s a batch.
MANY_ROWS = 50


def add(session: Session, model: type[Any], row: dict[str, Any]) -> None:
    """Insert `row` into `model`'s table when the session's transaction commits."""
    session.info.setdefault(_QUEUE, []).append((model, row))


def pending(session: Session) -> int:
    """How many rows (of every table) the session's transaction has queued so far."""
    return len(session.info.get(_QUEUE, ()))


def queued(session: Session, model: type[Any]) -> int:
    """How many rows of `model` the session's transaction has queued so far."""
    return sum(1 for queued_model, _ in session.info.get(_QUEUE, ()) if queued_model is model)


def committed(session: Session) -> dict[str, int]:
    """{table name: rows} inserted by the commit that just happened (for after_commit)."""
    found: dict[str, int] = session.info.get(_COMMITTED, {})
    return found


def statement(by_model: dict[type[Any], list[dict[str, Any]]]) -> tuple[TextClause, dict[str, Any]]:
    """One INSERT for every queued row: per table a multi-row VALUES, in the order the
    tables were first queued (all rows of one table have the same keys), and its
    parameters. The statement is made once per shape (tables, keys, rows per table) and
    kept, so SQLAlchemy compiles it once: a multi-row `insert().values([...])` is never
    cached by SQLAlchemy and was compiled again at every commit."""
    shape = tuple((model, tuple(rows[0]), len(rows)) for model, rows in by_model.items())
    params = {
        f"t{t}_{i}_{k}": row[key]
        for t, rows in enumerate(by_model.values())
        for i, row in enumerate(rows)
        for k, key in enumerate(shape[t][1])
    }
    return _template(shape), params


_QUOTE = postgresql.dialect().identifier_preparer.quote


@lru_cache(maxsize=256)
def _template(shape: tuple[tuple[type[Any], tuple[str, ...], int], ...]) -> TextClause:
    """`INSERT INTO first ... VALUES ...`, the other tables' INSERTs as CTEs of it, with a
    typed parameter `t{table}_{row}_{key}` per value."""
    inserts: list[str] = []
    binds = []
    for t, (model, keys, count) in enumerate(shape):
        table = model.__table__
        rows = ", ".join(
            "(" + ", ".join(f":t{t}_{i}_{k}" for k in range(len(keys))) + ")" for i in range(count)
        )
        columns = ", ".join(_QUOTE(key) for key in keys)
        inserts.append(f"INSERT INTO {_QUOTE(table.name)} ({columns}) VALUES {rows}")
        binds += [
            bindparam(f"t{t}_{i}_{k}", type_=table.c[key].type)
            for i in range(count)
            for k, key in enumerate(keys)
        ]
    first, *others = inserts
    ctes = ", ".join(f"commit_rows_{n} AS ({sql})" for n, sql in enumerate(others))
    return text(f"WITH {ctes} {first}" if ctes else first).bindparams(*binds)


def _by_model(
    rows: list[tuple[type[Any], dict[str, Any]]],
) -> dict[type[Any], list[dict[str, Any]]]:
    by_model: dict[type[Any], list[dict[str, Any]]] = {}
    for model, row in rows:
        by_model.setdefault(model, []).append(row)
    return by_model


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.setdefault(_SAVEPOINTS, {})[transaction] = len(session.info.get(_QUEUE, ()))


@event.listens_for(Session, "before_commit")
def _insert_before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint's release: its rows now belong to the enclosing transaction
    rows: list[tuple[type[Any], dict[str, Any]]] = session.info.pop(_QUEUE, [])
    by_model = _by_model(rows)
    session.info[_COMMITTED] = {m.__tablename__: len(r) for m, r in by_model.items()}
    # The session's connection, not session.execute: no autoflush, nothing else moves.
    if len(rows) > MANY_ROWS:
        for model, model_rows in by_model.items():
            session.connection().execute(insert(model), model_rows)
    elif rows:
        session.connection().execute(*statement(by_model))


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.nested:
        queued_before = session.info.get(_SAVEPOINTS, {}).pop(previous_transaction, None)
        pending = session.info.get(_QUEUE)
        if queued_before is not None and pending:
            del pending[queued_before:]
    elif previous_transaction.parent is None:
        session.info.pop(_QUEUE, None)
        session.info.pop(_COMMITTED, None)
    # else: a flush's subtransaction; the savepoint or transaction around it is rolled back
    # next, and that rollback says what goes


@event.listens_for(Session, "after_transaction_end")
def _forget_savepoints(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the transaction is over: so are its savepoints
        session.info.pop(_SAVEPOINTS, None)
