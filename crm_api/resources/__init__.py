"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    auth,
    contacts,
    deals,
    imports,
    notifications,
    organizations,
    reports,
    tasks,
)

MODULES = (
    auth,
    organizations,
    contacts,
    deals,
    tasks,
    activities,
    analytics,
    reports,
    imports,
    notifications,
)
