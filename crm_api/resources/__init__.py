"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    api_keys,
    audit_log,
    auth,
    bulk_actions,
    contacts,
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
    activities,
    analytics,
    reports,
    imports,
    bulk_actions,
    notifications,
    webhooks,
    api_keys,
    audit_log,
)
