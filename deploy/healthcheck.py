"""Container health check for either role of the image: exit 0 if /healthz answers 200.

The receiver listens on PORT, the worker on WORKER_METRICS_PORT; a container runs one
role, so whichever of the two answers is its process. Standard library only, 2 s cap.
"""

import os
import sys
import urllib.request

ports = {os.environ.get("PORT") or "8000", os.environ.get("WORKER_METRICS_PORT") or "9100"}
for port in sorted(ports - {"0"}):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            if resp.status == 200:
                sys.exit(0)
    except OSError:
        pass
sys.exit(1)
