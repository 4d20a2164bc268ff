"""The single-line text rule: names, titles, e-mail addresses, phone numbers, labels and the
other one-line values hold no character that breaks or controls a line.

Refused: the C0 controls (U+0000 to U+001F: tab, LF, VT, FF, CR and the information
separators U+001C to U+001F among them), DEL (U+007F), the C1 controls (U+0080 to U+009F,
NEL U+0085 among them): Unicode's category Cc; and the line and paragraph separators U+2028
and U+2029 (categories Zl and Zp). Python's `str.splitlines` splits on several of them and
e-mail headers refuse them, so one such character in an organization's name would break
every message that names it.

The API refuses them on input (crm_domain.validation.fields.SingleLine, which CSV import
rows meet too); `one_line` makes a value that was stored before the rule existed safe to put
on one line (e-mail subjects and bodies)."""

from __future__ import annotations

import re

LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# The same set as a JSON Schema (ECMA-262) pattern, for the OpenAPI document.
SINGLE_LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"


def line_breaking_character(text: str) -> str | None:
    """The first character of `text` that a single-line value may not hold, or None."""
    found = LINE_BREAKING.search(text)
    return None if found is None else found.group()[0]


def one_line(text: str) -> str:
    """`text` with each run of line-breaking or control characters replaced by one space."""
    return LINE_BREAKING.sub(" ", text)
