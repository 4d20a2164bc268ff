"""Message bodies from Jinja templates (HTML autoescaped; every message has a plain-text part)
and the MIME message around them.

What a template or a header shows of the data (names, titles, addresses) is put on one line
first (crm_domain.text.one_line): the API refuses line breaks and control characters in such
values, but a row stored before that rule may still hold one, and a line break in a header
value makes the message impossible to build (and in a body, lets a name write its own
lines)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..text import one_line


def _on_one_line(value: Any) -> Any:
    """Jinja `finalize`: every value a template prints is a one-line value."""
    if isinstance(value, str) and not hasattr(value, "__html__"):  # Markup is the template's own
        return one_line(value)
    return value


_env = Environment(
    loader=PackageLoader("crm_domain.mail", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    finalize=_on_one_line,
)


@dataclass(frozen=True)
class Content:
    subject: str
    text: str
    html: str | None = None
    # Values for the recipient's eyes only (an invitation token): in the message, never in a
    # log line (the transport masks them).
    secrets: tuple[str, ...] = ()


def render(
    template: str, subject: str, *, secrets: tuple[str, ...] = (), **context: Any
) -> Content:
    """`<template>.txt` and `<template>.html` rendered with `context`."""
    text = _env.get_template(f"{template}.txt").render(subject=subject, **context)
    html = _env.get_template(f"{template}.html").render(subject=subject, **context)
    return Content(subject=subject, text=text, html=html, secrets=secrets)


def build_message(content: Content, *, sender: str, to: str) -> EmailMessage:
    """text/plain, plus text/html as multipart/alternative when there is an HTML body."""
    message = EmailMessage()
    message["Subject"] = one_line(content.subject)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message.set_content(content.text)
    if content.html is not None:
        message.add_alternative(content.html, subtype="html")
    return message
