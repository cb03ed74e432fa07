"""Settings: env vars, clear errors that never print a secret."""

from __future__ import annotations

import pytest

from ringez_worker.settings import SettingsError, load_settings, require


def test_defaults_and_comma_separated_lists(monkeypatch):
    monkeypatch.setenv("RINGEZ_WEBHOOK_SECRET", " whsec_a , whsec_b ,")
    monkeypatch.setenv("RINGEZ_HANDLERS", "myapp.handlers, other.mod")
    settings = load_settings(_env_file=None)
    assert settings.port == 8000
    assert settings.webhook_secrets == [b"whsec_a", b"whsec_b"]
    assert settings.handler_modules == ["myapp.handlers", "other.mod"]


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("PORT=9123\nRINGEZ_WEBHOOK_SECRET=whsec_from_file\n")
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("RINGEZ_WEBHOOK_SECRET", raising=False)
    settings = load_settings(_env_file=str(env))
    assert settings.port == 9123
    assert settings.webhook_secrets == [b"whsec_from_file"]


def test_malformed_values_name_the_field_but_never_the_value(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2secret@example")
    monkeypatch.setenv("PORT", "not-a-port-hunter2secret")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "REDIS_URL" in message and "PORT" in message
    assert "hunter2secret" not in message


def test_missing_required_settings_are_named():
    settings = load_settings(_env_file=None, ringez_webhook_secret="")
    with pytest.raises(SettingsError, match="RINGEZ_WEBHOOK_SECRET"):
        require(settings, "ringez_webhook_secret")


def test_secret_values_cover_key_secret_and_redis_password():
    settings = load_settings(
        _env_file=None,
        ringez_webhook_secret="whsec_one,whsec_two",
        ringez_api_key="sk_test_abcdef",
        redis_url="redis://:p4ssw0rd@localhost:6379/0",
    )
    values = settings.secret_values()
    for secret in ("whsec_one", "whsec_two", "sk_test_abcdef", "p4ssw0rd"):
        assert secret in values
    assert "sk_test_abcdef" not in repr(settings)


def test_a_wait_longer_than_the_socket_timeout_is_refused() -> None:
    with pytest.raises(SettingsError, match="REDIS_WAIT_TIMEOUT_MS"):
        load_settings(_env_file=None, redis_wait_replicas=1, redis_wait_timeout_ms=2000)


@pytest.mark.parametrize(
    "url", ["redis://:p%40ss@127.0.0.1:6379/0", "unix:///tmp/redis.sock?password=p%40ss"]
)
def test_both_clients_log_in_with_the_same_password(url: str) -> None:
    # arq's from_dsn alone would send `p%40ss`, or nothing for `?password=`.
    from ringez_worker.redis_conn import arq_redis_settings

    settings = load_settings(_env_file=None, redis_url=url)
    assert arq_redis_settings(settings).password == "p@ss"
    assert "p@ss" in settings.secret_values()
