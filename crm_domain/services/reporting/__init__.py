"""Figures: the analytics queries (summary, funnel), their cache in Redis, and the pipeline
reports built from them.

May import crm_domain's core modules, `services._common`, `records` and `delivery`; never
`mailing` or `transfer`."""
