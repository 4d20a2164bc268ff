"""gunicorn entry point: `gunicorn wsgi:app`."""

from crm_api import create_app

app = create_app()
