"""gunicorn settings (read automatically from the working directory; env-tunable).

Default: cores + 1 sync worker processes. On the 2-core benchmark machine (PostgreSQL on the
same host, CPU-bound) 3 sync workers served more requests, with a lower p95, than 3 workers
with 2-4 threads each: see docs/PERFORMANCE.md. Behind a proxy that buffers slow clients,
or with a remote database, raise WEB_THREADS."""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("WEB_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
keepalive = 5
timeout = 30
graceful_timeout = 20
max_requests = 10_000  # recycle workers now and then (bounded memory growth)
max_requests_jitter = 1_000
accesslog = "-" if os.environ.get("ACCESS_LOG", "1") == "1" else None
