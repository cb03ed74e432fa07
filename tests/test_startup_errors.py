"""Every start-up error is one line on stderr naming the variable or module and the
reason, exit code 2, and never the value: the real CLI, as a subprocess."""

from __future__ import annotations

import pytest

from ringez_worker.sandbox.redis_server import free_port
from tests.processes import ROOT, run_cli

# An API key turns the agents on, so the worker reads AgentSettings at start-up.
BASE = {"RINGEZ_API_KEY": "sk_test_startup", "WORKER_METRICS_PORT": "0", "RINGEZ_HANDLERS": ""}


def _one_clean_line(result, name: str, value: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert value not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTS_ENABLED", "bogus_agent_x"),
        ("RECHARGE_AMOUNT", "abc_amount_x"),
        ("ESCALATION_DEFAULT_NUMBER", "1234598765"),
        ("LOG_LEVEL", "bogus_level_x"),
        ("REDIS_URL", "redis://localhost:port_x/0"),
    ],
)
def test_a_bad_setting_is_one_line_without_its_value(name: str, value: str) -> None:
    result = run_cli("worker", env={**BASE, "REDIS_URL": "redis://127.0.0.1:1/0", name: value})
    _one_clean_line(result, name, value)


@pytest.mark.parametrize(
    ("source", "spec", "reason"),
    [
        ("raise RuntimeError('boom_value_x')\n", "mod_raises", "RuntimeError"),
        ("def broken(:\n    pass  # boom_value_x\n", "mod_syntax", "SyntaxError"),
        ("router = None  # boom_value_x\n", "mod_noattr:handlers", "no attribute"),
        ("", "mod_missing_x.sub", "no module named"),
        ("def setup(router):\n    raise KeyError('boom_value_x')\n", "mod_setup:setup", "KeyError"),
    ],
)
def test_a_handler_module_that_fails_to_load_is_one_line(tmp_path, source, spec, reason) -> None:
    module = spec.partition(":")[0]
    if source:
        (tmp_path / f"{module}.py").write_text(source)
    env = {
        **BASE,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PYTHONPATH": f"{ROOT}:{tmp_path}",
        "RINGEZ_HANDLERS": spec,
    }
    line = _one_clean_line(run_cli("worker", env=env), "RINGEZ_HANDLERS", "boom_value_x")
    assert module.split(".")[0] in line and reason in line


@pytest.mark.parametrize("command", [("status",), ("failed", "list"), ("failed", "show", "ab")])
def test_commands_with_redis_down_are_one_line(command: tuple[str, ...]) -> None:
    port = str(free_port())  # nothing listens there
    result = run_cli(*command, env={"REDIS_URL": f"redis://:pw_value_x@127.0.0.1:{port}/0"})
    line = _one_clean_line(result, "REDIS_URL", "pw_value_x")
    assert port not in line
