#!/usr/bin/env python3
"""The images' HEALTHCHECK: exit 0 when the node answers ``ok`` on ``/healthz``, else 1.

Standard library only, so it needs nothing the slim images lack (they have no curl). The port is
the node's own setting: ``N2D_HTTP_PORT`` when set (the node reads the same variable), else 8080,
the default of ``http_port``; the node must bind 0.0.0.0 or 127.0.0.1 for loopback to reach it.
"""

import os
import sys
import urllib.request

#: ``http_port``'s default in the node's configuration.
DEFAULT_HTTP_PORT = 8080


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('N2D_HTTP_PORT', DEFAULT_HTTP_PORT)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            healthy = response.status == 200 and response.read().strip() == b"ok"
    except OSError as exc:  # URLError and HTTPError (not 200) are OSErrors too
        print(f"n2d-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"n2d-healthcheck: {url}: {'ok' if healthy else 'unexpected answer'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
