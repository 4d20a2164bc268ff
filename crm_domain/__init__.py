"""CRM domain: models, business rules and services. Knows nothing of Flask or Celery."""
