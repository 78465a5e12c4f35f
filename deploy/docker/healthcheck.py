#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when ``GET /health`` on this container answers 200, else 1.

The port is ``LLMHOST_PORT`` (default 8080), the address loopback (llmhost allows a loopback ``Host``
whatever ``security.allowed_hosts`` says). The standard library only: the runtime image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("LLMHOST_PORT", "8080")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"llmhost-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"llmhost-healthcheck: {url} answered {response.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
