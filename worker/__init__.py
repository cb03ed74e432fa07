"""The runtime: the receiver, the queue, the worker, dispatch and the CLI."""

if __name__ != "ringez_worker.worker":  # the folder maps into the namespace (pyproject.toml)
    raise ImportError(
        f"import ringez_worker.worker, not {__name__}: this folder is installed as "
        "ringez_worker.worker, and a second name would load a second copy of its modules"
    )
