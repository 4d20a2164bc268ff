"""Celery side: timeline delivery and other background work. Flask-free."""
