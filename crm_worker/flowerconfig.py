"""Flower settings (`celery -A celery_app flower --conf=crm_worker/flowerconfig.py`):
basic auth always on, credentials from FLOWER_BASIC_AUTH ("user:password")."""

from crm_domain.settings import Settings

_settings = Settings.from_env()
if _settings.environment == "production" and _settings.flower_basic_auth == "admin:admin":
    raise RuntimeError("set FLOWER_BASIC_AUTH when CRM_ENV=production")

basic_auth = [_settings.flower_basic_auth]
