"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    auth,
    contacts,
    deals,
    invitations,
    notifications,
    organizations,
    reports,
    tasks,
)

MODULES = (
    auth,
    organizations,
    invitations,
    contacts,
    deals,
    tasks,
    activities,
    analytics,
    reports,
    notifications,
)
