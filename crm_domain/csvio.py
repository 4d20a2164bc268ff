"""The CSV files of imports and exports: their columns, reading them and writing them.

Both directions use the same columns per kind, so an export can be imported again. Files are
UTF-8 (a byte order mark is accepted and dropped), comma-separated, with a header row; quoting
follows RFC 4180 and is checked strictly (an unbalanced quote is an error, not a long field).
Rows are numbered as a spreadsheet numbers them: the header is row 1. Blank rows are skipped.

Formulas (OWASP "CSV Injection"): a spreadsheet runs a cell that starts with `=`, `+`, `-`,
`@`, a tab or a carriage return. Written text that would start so gets a leading `'`, which
spreadsheets show as the text itself (`neutralize`); numbers (amounts, ids) are written as
numbers. Reading removes that quote again (`restore`), so an export imports back unchanged:
text that itself starts with quotes before such a character gets one quote more on the way
out, and loses exactly one on the way in."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import IO, Any

from .enums import ImportKind
from .errors import ValidationFailed

COLUMNS: dict[ImportKind, tuple[str, ...]] = {
    ImportKind.CONTACTS: ("name", "email", "phone", "owner_email"),
    ImportKind.DEALS: (
        "title",
        "amount",
        "currency",
        "status",
        "stage",
        "contact_id",
        "contact_email",
        "owner_email",
    ),
}
# Each group needs at least one of its columns in the header.
REQUIRED: dict[ImportKind, tuple[tuple[str, ...], ...]] = {
    ImportKind.CONTACTS: (("name",),),
    ImportKind.DEALS: (("title",), ("contact_id", "contact_email")),
}
_TEXT_CHUNK = 64 * 1024
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED_FORMULA = re.compile(r"'+[=+\-@\t\r]")  # what neutralize quoted: restore unquotes it


@dataclass(frozen=True, slots=True)
class Layout:
    """What a first pass over an upload learned: its columns and how many rows it holds."""

    header: tuple[str, ...]
    rows: int


def open_text(binary: IO[bytes]) -> io.TextIOWrapper:
    """Strict UTF-8 text over a binary stream (a leading BOM is dropped). Detach it when done
    if the binary stream must stay open."""
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")  # type: ignore[type-var]
    text._CHUNK_SIZE = _TEXT_CHUNK  # type: ignore[attr-defined]
    return text


class Reader:
    """Rows of a CSV text stream as (row number, {column: cell}) after checking the header.

    A row whose number of cells differs from the header's is given as (row, None)."""

    def __init__(self, text: IO[str], kind: ImportKind, extra: Sequence[str] = ()) -> None:
        self._records = csv.reader(text, strict=True)
        self._row = 0
        first = self._next()
        if first is None:
            raise ValidationFailed("The file is empty", code="CSV_EMPTY")
        self.header = _check_header(first, kind, extra)

    def _next(self) -> list[str] | None:
        """The next record, or None at the end; bad bytes and bad quoting are 400s."""
        try:
            record = next(self._records, None)
        except UnicodeDecodeError as exc:
            raise ValidationFailed(
                "The file is not UTF-8 text (save it as CSV UTF-8)",
                code="CSV_NOT_UTF8",
                details={"reason": exc.reason},
            ) from exc
        except csv.Error as exc:
            raise ValidationFailed(
                f"The file is not well-formed CSV: {exc}",
                code="CSV_MALFORMED",
                details={"row": self._row + 1, "line": self._records.line_num},
            ) from exc
        if record is not None:
            self._row += 1
        return record

    def rows(self, after: int = 1) -> Iterator[tuple[int, dict[str, str] | None]]:
        """Non-blank rows numbered above `after` (the header is row 1)."""
        width = len(self.header)
        while (record := self._next()) is not None:
            if self._row <= after or not any(record):
                continue
            if len(record) != width:
                yield self._row, None
            else:
                yield self._row, {c: restore(v) for c, v in zip(self.header, record, strict=True)}


def _check_header(cells: list[str], kind: ImportKind, extra: Sequence[str]) -> tuple[str, ...]:
    """`extra`: the columns allowed besides the kind's own (its custom fields' keys)."""
    header = tuple(cell.strip().lower() for cell in cells)
    known = (*COLUMNS[kind], *extra)
    details = {"expected": list(known), "found": list(header)}
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ValidationFailed(
            f"Columns appear more than once: {', '.join(repeated)}",
            code="CSV_DUPLICATE_COLUMNS",
            details=details,
        )
    unknown = [c for c in header if c not in known]
    if unknown:
        raise ValidationFailed(
            f"Unknown columns for {kind.value}: {', '.join(unknown)}",
            code="CSV_UNKNOWN_COLUMNS",
            details=details,
        )
    missing = [" or ".join(g) for g in REQUIRED[kind] if not set(g) & set(header)]
    if missing:
        raise ValidationFailed(
            f"Missing required columns: {', '.join(missing)}",
            code="CSV_MISSING_COLUMNS",
            details=details,
        )
    return header


def inspect(binary: IO[bytes], kind: ImportKind, extra: Sequence[str] = ()) -> Layout:
    """One streaming pass over an upload: UTF-8, well-formed CSV, a valid header and at least
    one row; raises ValidationFailed (a 400) otherwise. The stream is left open."""
    text = open_text(binary)
    try:
        reader = Reader(text, kind, extra)
        rows = sum(1 for _ in reader.rows())
    except ValidationFailed as exc:
        if exc.code == "CSV_NOT_UTF8":
            exc.details.update(_first_bad_byte(binary))
        raise
    finally:
        text.detach()
    if rows == 0:
        raise ValidationFailed("The file has a header but no rows", code="CSV_NO_ROWS")
    return Layout(header=reader.header, rows=rows)


def _first_bad_byte(binary: IO[bytes]) -> dict[str, int]:
    """Where the first byte that is not UTF-8 is: {"byte": offset, "line": 1-based line}."""
    binary.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    while chunk := binary.read(_TEXT_CHUNK):
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            # positions count from the bytes of an unfinished character the decoder held back
            before = exc.start - len(decoder.getstate()[0])
            return {"byte": offset + before, "line": lines + chunk[: max(0, before)].count(b"\n")}
        offset += len(chunk)
        lines += chunk.count(b"\n")
    return {}


def neutralize(text: str) -> str:
    """`text` as a spreadsheet shows it without running it: a leading `'` when it starts
    with a formula character (or with quotes before one, so that `restore` is exact)."""
    if text.startswith(FORMULA_STARTS) or _QUOTED_FORMULA.match(text):
        return "'" + text
    return text


def restore(text: str) -> str:
    """The text `neutralize` was given: one leading quote before a formula character goes."""
    return text[1:] if _QUOTED_FORMULA.match(text) else text


def cell(value: Any, *, raw: bool = False) -> str:
    """How a value is written in a CSV cell (and read back by the import). Text is
    neutralized unless `raw` (numbers, enums and empty values never need it)."""
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, str):
        return value if raw else neutralize(value)
    return str(value)


def to_csv(rows: Iterable[Sequence[Any]], *, raw: bool = False) -> str:
    """CSV text of `rows` (CRLF line ends, quoting only where needed). Text cells that a
    spreadsheet would run as formulas are neutralized unless `raw`."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([cell(v, raw=raw) for v in row] for row in rows)
    return buffer.getvalue()
