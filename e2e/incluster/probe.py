"""HTTP probes from a pod in the cluster (the e2e real-node tier's attacker pod runs this).

Reads a JSON list of ``{"name", "method", "url", "headers"?, "json"?}`` and prints one JSON object mapping
each name to the HTTP status it got, or to the kind of failure (``refused``, ``timeout``, ``error:<type>``)
when no answer came. Standard library only: it must say exactly what a pod could reach, nothing more.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from typing import Any


def probe(check: dict[str, Any]) -> int | str:
    body = json.dumps(check["json"]).encode() if "json" in check else None
    headers = {"content-type": "application/json", **check.get("headers", {})}
    request = urllib.request.Request(check["url"], data=body, method=check["method"], headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, ConnectionRefusedError):
            return "refused"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timeout"
        return f"error:{type(reason).__name__}"
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return f"error:{type(error).__name__}"


def main() -> int:
    with open(sys.argv[1]) as source:
        checks = json.load(source)
    print(json.dumps({check["name"]: probe(check) for check in checks}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
