"""HTTP resources, one module per area; MODULES sets the registration (and tag) order."""

from . import (
    activities,
    analytics,
    api_keys,
    audit_log,
    auth,
    contact_merge,
    contacts,
    deals,
    imports,
    invitations,
    notifications,
    organizations,
    reports,
    tasks,
    trash,
    webhooks,
)

MODULES = (
    auth,
    organizations,
    invitations,
    contacts,
    contact_merge,
    deals,
    tasks,
    activities,
    trash,
    analytics,
    reports,
    imports,
    notifications,
    webhooks,
    api_keys,
    audit_log,
)
