"""The daily report: gather a day's figures, render charts and one HTML page, keep them.

Gathering (`data`) reads the Ringez API and the service's own Redis records; rendering
(`charts`, `page`) is plain matplotlib on the Agg backend, without pyplot's global state,
so it can run in a thread beside the worker's event loop.
"""

from __future__ import annotations

if __name__ != "ringez_worker.report":  # the folder maps into the namespace (pyproject.toml)
    raise ImportError(
        f"import ringez_worker.report, not {__name__}: this folder is installed as "
        "ringez_worker.report, and a second name would load a second copy of its modules"
    )
