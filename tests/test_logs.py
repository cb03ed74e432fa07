"""JSON log lines: written through the buffer, one per call, secrets removed."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
import structlog

from ringez_worker.logs import REDACTED, HotLine, configure_logging, get_logger
from tests.conftest import wait_for

SECRET = "whsec_log_test_0123456789"


@pytest.fixture
def restore_logging():
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


async def test_json_lines_reach_the_file_without_secrets(tmp_path, restore_logging):
    path = tmp_path / "log.jsonl"
    with path.open("w") as stream:
        configure_logging("INFO", "json", secrets=[SECRET], stream=stream)
    log = get_logger("ringez.test")
    log.info("webhook.accepted", delivery_id="d1", note=f"key={SECRET}", api_key="rk_1")
    log.debug("below.level", delivery_id="d2")
    logging.getLogger("arq.jobs").warning("stdlib line %s", SECRET)

    def lines() -> list[dict]:
        return [orjson.loads(line) for line in path.read_text().splitlines()]

    await wait_for(lambda: len(lines()) >= 2, deadline_s=5, what="two flushed log lines")
    ours, stdlib = lines()
    assert ours["event"] == "webhook.accepted"
    assert ours["delivery_id"] == "d1"
    assert ours["logger"] == "ringez.test"
    assert ours["level"] == "info"
    assert ours["note"] == f"key={REDACTED}"
    assert ours["api_key"] == REDACTED
    assert stdlib["event"] == f"stdlib line {REDACTED}"
    assert SECRET not in path.read_text()


@pytest.mark.parametrize("keep", [False, True])
def test_phone_numbers_are_masked_unless_asked_for(restore_logging, keep):
    stream = io.StringIO()  # no file descriptor: written at once, not through the buffer
    configure_logging("INFO", "json", stream=stream, phone_numbers=keep)
    log = get_logger("ringez.test")
    log.info("call.placed", to="+14155550100", nested={"numbers": ["tel:+442071838750"]})
    logging.getLogger("arq.jobs").warning("stdlib line to +14155550100")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    text = "\n".join(lines)
    if keep:
        assert "+14155550100" in text and "+442071838750" in text
    else:
        assert "5550100" not in text and "442071838750" not in text
        ours = orjson.loads(lines[0])
        assert ours["to"] == "+***0100"
        assert ours["nested"] == {"numbers": ["tel:+***8750"]}
        assert "+***0100" in lines[1]


HOT_CASES = {
    "plain": {"delivery_id": "d" * 64, "event_type": "call.completed", "call_id": "call_1"},
    "a phone number": {"call_id": "call_1", "to": "tel:+14155550100"},
    "a secret in a value": {"note": f"key={SECRET} was sent", "n": 3},
    "a sensitive key": {"delivery_id": "d1", "api_key": "rk_live_1"},
    "nested values": {"call_id": None, "body": {"to": ["+14155550100", SECRET]}, "x": 1.5},
}


@pytest.mark.parametrize("keep_phones", [False, True])
@pytest.mark.parametrize("case", list(HOT_CASES))
def test_a_hot_line_writes_what_the_chain_writes(restore_logging, case, keep_phones):
    stream = io.StringIO()
    configure_logging("INFO", "json", secrets=[SECRET], stream=stream, phone_numbers=keep_phones)
    log = get_logger("ringez.receiver").bind(worker="w1")
    fields = HOT_CASES[case]
    log.info("webhook.accepted", **fields)
    HotLine(log, "webhook.accepted")(**fields)
    chain, hot = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert chain.pop("timestamp")[:10] == hot.pop("timestamp")[:10]
    assert list(hot.items()) == list(chain.items())  # the same keys, in the same order
    assert SECRET not in stream.getvalue()
    assert ("+14155550100" in stream.getvalue()) == (keep_phones and "+1415" in str(fields))


def test_a_hot_line_keeps_the_level_and_the_console_format(restore_logging):
    stream = io.StringIO()
    configure_logging("WARNING", "json", stream=stream)
    HotLine(get_logger("ringez.receiver").bind(), "webhook.accepted")(call_id="c1")
    assert stream.getvalue() == ""
    configure_logging("INFO", "console", stream=stream)
    HotLine(get_logger("ringez.receiver").bind(), "webhook.accepted")(call_id="c1")
    text = stream.getvalue()
    assert "webhook.accepted" in text and "call_id" in text and not text.startswith("{")


def test_a_hot_line_on_an_unbound_logger_writes_its_line(restore_logging):
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    HotLine(get_logger("ringez.receiver"), "webhook.accepted")(call_id="c1")
    line = orjson.loads(stream.getvalue())
    assert line["event"] == "webhook.accepted" and line["logger"] == "ringez.receiver"


def test_a_hot_line_with_a_traceback_takes_the_chain(restore_logging):
    stream = io.StringIO()
    configure_logging("INFO", "json", secrets=[SECRET], stream=stream)
    line = HotLine(get_logger("ringez.receiver").bind(), "webhook.accepted")
    try:
        raise RuntimeError(f"bad key {SECRET}")
    except RuntimeError as exc:
        line(exc_info=exc)
    written = orjson.loads(stream.getvalue())
    assert "exc_info" not in written and "RuntimeError: bad key" in written["exception"]
    assert SECRET not in stream.getvalue()
    with pytest.raises(ValueError):
        HotLine(get_logger("ringez.receiver").bind(), "webhook.accepted", "warn")


class _Holder:
    def __str__(self) -> str:
        return f"holder of {SECRET}"


@pytest.mark.parametrize("hot", [False, True])
def test_secrets_inside_any_value_are_redacted(restore_logging, hot):
    stream = io.StringIO()
    configure_logging("INFO", "json", secrets=[SECRET], stream=stream)
    log = get_logger("ringez.test").bind()
    fields = {
        "nested": {"password": "p4ss-word", "ok": 1},
        "raw": SECRET.encode(),
        "some": {SECRET},
        "obj": _Holder(),
    }
    if hot:
        HotLine(log, "ev")(**fields)
    else:
        log.info("ev", **fields)
    text = stream.getvalue()
    assert SECRET not in text and "p4ss-word" not in text
    line = orjson.loads(text)
    assert line["nested"] == {"password": REDACTED, "ok": 1}
    assert line["raw"] == REDACTED and line["some"] == [REDACTED]
