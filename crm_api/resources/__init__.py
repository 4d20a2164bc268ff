"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    auth,
    contacts,
    deals,
    notifications,
    organizations,
    reports,
    tasks,
    webhooks,
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
    notifications,
    webhooks,
)
