"""Validation of what a single write may carry, shared by the API (request bodies) and the
domain (CSV import rows): marshmallow schemas, no Flask. A core module: imports crm_domain's
core modules only (rules, enums), never the services."""
