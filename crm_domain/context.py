"""Who is acting, and in which organization."""

from __future__ import annotations

from dataclasses import dataclass

from .enums import Role


@dataclass(frozen=True, slots=True)
class Actor:
    """The authenticated user acting inside one organization with the role they hold there."""

    user_id: int
    organization_id: int
    role: Role
