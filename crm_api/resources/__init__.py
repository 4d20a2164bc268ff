"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    api_keys,
    auth,
    contacts,
    custom_fields,
    deals,
    imports,
    invitations,
    notifications,
    organizations,
    reports,
    tasks,
    webhooks,
)

MODULES = (
    auth,
    organizations,
    invitations,
    contacts,
    deals,
    tasks,
    custom_fields,
    activities,
    analytics,
    reports,
    imports,
    notifications,
    webhooks,
    api_keys,
)
