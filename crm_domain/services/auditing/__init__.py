"""The audit log's reading side: the log (newest first, filtered), the change feed (oldest
first, exactly once) and retention. Entries are written by crm_domain.audit, in the change's
own transaction. Owners and admins only: the log shows everyone's changes."""
