"""Task and queue names: what publishers, the beat schedule (crm_worker.app) and the tasks
(crm_worker.tasks) agree on."""

DRAIN_TASK = "crm.outbox.drain"
REFRESH_TASK = "crm.analytics.refresh"
SWEEP_STALE_TASK = "crm.analytics.sweep_stale"  # beat, every SWEEP_STALE_SECONDS
SWEEP_STALE_SECONDS = 10.0
REPORT_BUILD_TASK = "crm.reports.build"
SEND_MAIL_TASK = "crm.email.send_pending"
SEND_WEBHOOKS_TASK = "crm.webhooks.send"  # queue "webhooks" (task_routes in crm_worker.app)
SWEEP_WEBHOOKS_TASK = "crm.webhooks.sweep"
IMPORT_TASK = "crm.imports.run"
IMPORT_QUEUE = "imports"
PURGE_CUSTOM_FIELD_TASK = "crm.custom_fields.purge"  # queue "bulk"
BULK_ACTION_TASK = "crm.bulk_actions.run"  # on the imports queue (crm_worker.app)
BULK_ACTION_STALLED_TASK = "crm.bulk_actions.requeue_stalled"
