"""One virtualenv per peer engine, made on first use under ~/.cache/ringez-bench-peers.

The peers cannot share the project's venv: taskiq-redis needs redis-py >= 8 and arq
0.28 (the project's pin) forbids it, and streaQ brings its own Redis client (coredis).
Each venv is keyed by its pinned requirements: a marker file holds them, and a venv
whose marker differs is rebuilt, so a changed pin never measures a stale install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path.home() / ".cache" / "ringez-bench-peers"

# Pinned so that a rerun measures the same code. redis-py (with hiredis) sits beside
# every peer: the INCR job itself goes through redis-py in all of them.
REQUIREMENTS: dict[str, list[str]] = {
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", "uvloop", "hiredis"],
    "arq": ["arq==0.28.0", "uvloop", "hiredis"],
    # saq 0.26.4 imports typing_extensions without declaring it.
    "saq": ["saq[redis]==0.26.4", "typing_extensions", "uvloop", "hiredis"],
    "streaq": ["streaq==7.2.0", "redis", "hiredis", "uvloop"],
}
MARKER = "ringez-bench-requirements.txt"


def python_for(peer: str) -> Path:
    """The interpreter of `peer`'s venv, creating or rebuilding the venv when needed."""
    venv = CACHE / peer
    python = venv / "bin" / "python"
    wanted = "\n".join(REQUIREMENTS[peer]) + "\n"
    marker = venv / MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"making the {peer} venv in {venv} ...", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS[peer]], check=True, timeout=900)
    # Written last: an interrupted install leaves no marker and is redone next time.
    marker.write_text(wanted)
    return python


def versions(peer: str) -> str:
    """`pip freeze` lines of the packages that matter, for the results' header."""
    out = subprocess.run(
        [str(python_for(peer)), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    keep = ("taskiq", "arq", "saq", "streaq", "redis", "coredis", "hiredis", "uvloop")
    return ", ".join(
        line for line in out.splitlines() if line.split("==")[0].lower().startswith(keep)
    )


if __name__ == "__main__":
    for name in sys.argv[1:] or list(REQUIREMENTS):
        print(name, python_for(name), versions(name))
