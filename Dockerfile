FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crm_domain ./crm_domain
COPY crm_api ./crm_api
COPY crm_worker ./crm_worker
RUN pip install --no-cache-dir .
COPY migrations ./migrations
COPY alembic.ini wsgi.py celery_app.py gunicorn.conf.py ./
COPY scripts/with-metrics-dir ./scripts/
# The metrics volume (docker-compose.yml) starts as a copy of this directory: owned by crm.
RUN useradd --create-home crm && mkdir /metrics && chown crm /metrics
USER crm
EXPOSE 8000
CMD ["gunicorn", "wsgi:app"]
