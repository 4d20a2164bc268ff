"""The CRM's own records: users and login sessions (auth), organizations and their members,
contacts, deals, tasks, a deal's timeline (activities), notifications and the daily deadline
reminders.

May import crm_domain's core modules, `services._common` and `delivery` (a change records its
outbox events); never `mailing`, `transfer` or `reporting`, which build on records."""
