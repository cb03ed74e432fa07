"""The distribution installs one top-level import package, and no module has two names.

`pip install ringez-agent-worker` once put `agents`, `handlers` and `worker` into
site-packages, where the OpenAI Agents SDK also installs `agents`: pip overwrites one with
the other without a word. The wheel is built here and its file list read, so the
collision cannot come back.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = ("handlers", "agents", "worker", "sandbox")
PIP = (sys.executable, "-m", "pip")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
        timeout=120,
    )
    (found,) = out.glob("ringez_agent_worker-*.whl")
    return found


def test_the_wheel_adds_exactly_one_top_level_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/")[0] for n in names}
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = zf.read(top_level).decode().split()
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"ringez_worker"}
    assert declared == ["ringez_worker"]
    for sub in ("api", *MAPPED):
        assert f"ringez_worker/{sub}/__init__.py" in names


def test_the_built_wheel_imports_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    """A plain (not editable) install of the mapped layout: every layer imports."""
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
    )
    code = (
        "import ringez_worker.worker.cli, ringez_worker.sandbox.dev, ringez_worker.agents;"
        "import ringez_worker.handlers as h; print(h.__file__)"
    )
    env_path = f"{target}"
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(target))


@pytest.mark.parametrize("name", MAPPED)
def test_a_mapped_folder_refuses_its_bare_name(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"import ringez_worker.{name}, not {name}" in done.stderr


def test_the_wheel_ships_the_console_templates_and_static_files(wheel: Path) -> None:
    """A plain `pip install .` must carry the console's pages, not only its modules."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    prefix = "ringez_worker/worker/console/"
    for page in ("base.html", "overview.html", "deliveries.html", "call.html", "failed.html"):
        assert f"{prefix}templates/{page}" in names
    assert {f"{prefix}static/console.js", f"{prefix}static/console.css"} <= names


def test_every_base_module_sits_in_a_layer_contract() -> None:
    # The layers contract names the base modules one by one: a module added to
    # ringez_worker/ and left out of it could import the runtime and CI would pass.
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    base = {name.strip() for name in layers[-1].split(":")}
    no_sandbox = next(c for c in contracts if c["name"].startswith("nothing below the CLI"))
    modules = {
        f"ringez_worker.{path.stem}"
        for path in (ROOT / "ringez_worker").glob("*.py")
        if path.stem != "__init__"
    }
    assert modules - base == set(), "add these to the base layer in pyproject.toml"
    assert modules - set(no_sandbox["source_modules"]) == set()
