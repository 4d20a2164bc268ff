"""gunicorn settings (read automatically from the working directory; env-tunable).

Default: `gthread` workers (cores + 1 processes, WEB_THREADS threads each) with keep-alive,
the application preloaded in the master so a new or recycled worker is fast from its first
request. Measured against sync workers and other thread counts in docs/PERFORMANCE.md.

Slow clients: the worker class is gthread's, except that no thread waits for a client
(crm_api.web_worker): a request is handled once its head and body (up to MAX_CONTENT_LENGTH)
have arrived, under HEADER_READ_TIMEOUT, BODY_READ_TIMEOUT and BODY_TOTAL_TIMEOUT (408 past
them), so slow clients hold sockets, never threads. In front of the internet put a buffering
proxy anyway (docker-compose.yml has nginx). WEB_WORKER_CLASS=gthread gives gunicorn's own
worker.

Overload: each worker runs at most WEB_MAX_RUNNING requests (default: threads - 1) and parks
WEB_MAX_QUEUED (4) more; past that, 503 with Retry-After before the app runs (probes exempt;
crm_api.web_worker, docs/PERFORMANCE.md "Overload").

Logs: text, or JSON with LOG_FORMAT=json, for gunicorn and the application alike; the access
line carries the route template, user, organization and request id (crm_api.access_log).
Metrics: each worker writes to PROMETHEUS_MULTIPROC_DIR (scripts/with-metrics-dir sets and
empties it); a worker that exits is marked dead so its live gauges stop counting."""

import multiprocessing
import os

from crm_api.access_log import access_log_format as _access_log_format
from crm_api.access_log import logconfig as _logconfig
from crm_domain.settings import log_format_from_env

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("WEB_THREADS", "8"))
worker_class = os.environ.get(
    "WEB_WORKER_CLASS", "crm_api.web_worker.BufferingThreadWorker" if threads > 1 else "sync"
)
keepalive = int(os.environ.get("WEB_KEEPALIVE", "15"))
timeout = 30
graceful_timeout = 20
preload_app = os.environ.get("WEB_PRELOAD", "1") == "1"
max_requests = 20_000  # recycle workers now and then (bounded memory growth)
max_requests_jitter = 2_000
accesslog = "-" if os.environ.get("ACCESS_LOG", "1") == "1" else None
_log_format = log_format_from_env()
access_log_format = _access_log_format(_log_format)
logger_class = "crm_api.access_log.AccessLogger"  # only the atoms those formats read
logconfig_dict = _logconfig(_log_format, access=accesslog is not None)
# gunicorn 25+ opens a control socket at a shared per-user path by default, so two
# instances on one host would replace each other's; nothing here uses it.
control_socket_disable = True


def post_fork(server, worker):
    """Pooled connections made in the master (none by design) must not cross fork()."""
    from wsgi import app

    app.extensions["crm_db"].dispose()


def child_exit(server, worker):
    """A dead worker's in-flight gauge must not count any more (its counters stay)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
