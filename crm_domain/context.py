"""Who is acting, and in which organization; and who set the work in progress going."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

from . import request_id
from .enums import Role


@dataclass(frozen=True, slots=True)
class Actor:
    """The authenticated user acting inside one organization with the role they hold there
    (with an API key: the key's user, in the key's organization, with the user's role now)."""

    user_id: int
    organization_id: int
    role: Role
    api_key_id: int | None = None  # the API key the request came with; None: a login token


@dataclass(frozen=True, slots=True)
class Origin:
    """Who set the work in progress going, for records that name their author (an audit
    entry's actor): a user, with the API key they sent if any, or the system (`user_id`
    None: workers, beat, tools); and the request it belongs to (None outside a request)."""

    user_id: int | None = None
    api_key_id: int | None = None
    request_id: str | None = None

    @property
    def is_system(self) -> bool:
        return self.user_id is None


# (user id, API key id) of the request's authenticated caller. A ContextVar, like the
# request id: the API binds it once the credential is verified (crm_api.access) and the
# request's outermost middleware resets it (crm_api.observability); workers never bind one.
Caller = tuple[int, int | None] | None
_caller: ContextVar[Caller] = ContextVar("crm_caller", default=None)


def bind_caller(user_id: int | None, api_key_id: int | None = None) -> Token[Caller]:
    return _caller.set(None if user_id is None else (user_id, api_key_id))


def reset_caller(token: Token[Caller]) -> None:
    _caller.reset(token)


def origin() -> Origin:
    """The one place that says who is behind the current work: the authenticated caller of
    this request (crm_api binds it), or the system; with the current request id."""
    caller = _caller.get()
    user_id, api_key_id = caller if caller is not None else (None, None)
    return Origin(user_id=user_id, api_key_id=api_key_id, request_id=request_id.current())
