"""The API container's health check (the Dockerfile's HEALTHCHECK, docker-compose.yml's web):
exit 0 when this container's gunicorn answers GET /ready with 200 (the database and Redis
answer), 1 otherwise. Python's own urllib, because the slim image has no curl."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/ready"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status (503: not ready)
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
