"""Getting work to the background and out of the house: the transactional outbox (events
written with the change, delivered in batches to the handlers registered for their topic),
the catalogue of domain events, and outbound webhooks (endpoints, fan-out, delivery state,
retry policy, sender leases).

The bottom of the services: may import crm_domain's core modules and `services._common`,
never another services package. Its dispatchers name no consumer: consumers register."""
