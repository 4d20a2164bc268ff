"""Data in and out: CSV import jobs (their state, the row writers, the run over a stored
file) and CSV exports.

May import crm_domain's core modules, `services._common`, `records` and `delivery`; never
`mailing` or `reporting`."""
