FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The locked versions first (requirements/app.txt, uv.lock's runtime set: pip checks every
# hash), then the project itself without dependencies: two builds ship the same versions.
COPY requirements/app.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/app.txt
COPY pyproject.toml README.md ./
COPY crm_domain ./crm_domain
COPY crm_api ./crm_api
COPY crm_worker ./crm_worker
RUN pip install --no-cache-dir --no-deps .
COPY migrations ./migrations
COPY alembic.ini wsgi.py celery_app.py gunicorn.conf.py ./
COPY scripts/with-metrics-dir scripts/healthcheck.py ./scripts/
# The metrics volume (docker-compose.yml) starts as a copy of this directory: owned by crm.
RUN useradd --create-home crm && mkdir /metrics && chown crm /metrics
USER crm
EXPOSE 8000
# The default command's health: GET /ready (database and Redis) through Python, no curl.
# Containers of this image that run a worker, beat or Flower serve no HTTP: compose turns
# the check off for them.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "scripts/healthcheck.py"]
CMD ["gunicorn", "wsgi:app"]
