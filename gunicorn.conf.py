"""gunicorn settings (read automatically from the working directory; env-tunable).

Sync-style Flask views that wait on PostgreSQL: a few processes, each with a few threads.
Measured on a 2-core machine in docs/PERFORMANCE.md."""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))
keepalive = 5
timeout = 30
graceful_timeout = 20
max_requests = 10_000  # recycle workers now and then (bounded memory growth)
max_requests_jitter = 1_000
accesslog = "-" if os.environ.get("ACCESS_LOG", "1") == "1" else None
