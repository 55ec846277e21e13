"""Configuration: every variable parsed, validated and explained."""

from __future__ import annotations

import logging

import pytest

import connguard
from connguard import Config, ConfigError
from connguard._config import SETTINGS, Precheck


def test_defaults_without_environment() -> None:
    """An empty environment gives the documented defaults."""
    config = Config.from_env({})
    assert config.enabled is True
    assert config.mode == "enforce"
    assert config.connect_timeout == 2.0
    assert config.min_connect_timeout == 1.5
    assert config.failure_threshold == 3
    assert (config.open_seconds, config.max_open_seconds) == (1.0, 3.0)
    assert config.costly_failure == 0.5
    assert config.precheck == Precheck("tcp")
    assert config.max_inflight_connects == 0
    assert config.integrations == ("socket", "asyncio", "httpx", "ldap3")
    assert config.log_level is None


def test_every_variable_is_read() -> None:
    """Each CONNGUARD_* variable of the contract sets its field."""
    config = Config.from_env(
        {
            "CONNGUARD_ENABLED": "no",
            "CONNGUARD_MODE": "Observe",
            "CONNGUARD_CONNECT_TIMEOUT": "2.5",
            "CONNGUARD_MIN_CONNECT_TIMEOUT": "0.25",
            "CONNGUARD_FAILURE_THRESHOLD": "5",
            "CONNGUARD_OPEN_SECONDS": "1",
            "CONNGUARD_MAX_OPEN_SECONDS": "60",
            "CONNGUARD_PRECHECK": "udp-echo:7007",
            "CONNGUARD_PRECHECK_FIRST_CONTACT": "true",
            "CONNGUARD_MAX_INFLIGHT_CONNECTS": "1",
            "CONNGUARD_BACKGROUND": "apm.local:8200, 10.9.0.0/16",
            "CONNGUARD_INCLUDE": "*",
            "CONNGUARD_EXCLUDE": "127.0.0.1:6379",
            "CONNGUARD_OVERRIDES": "ldap.corp:389 connect_timeout=0.5 precheck=none; "
            "[::1]:* priority=background",
            "CONNGUARD_INTEGRATIONS": "socket,httpx",
            "CONNGUARD_MAX_ENDPOINTS": "50",
            "CONNGUARD_LOG_LEVEL": "debug",
        }
    )
    assert config.enabled is False
    assert config.mode == "observe"
    assert (config.connect_timeout, config.min_connect_timeout) == (2.5, 0.25)
    assert config.failure_threshold == 5
    assert (config.open_seconds, config.max_open_seconds) == (1.0, 60.0)
    assert config.precheck == Precheck("udp-echo", 7007)
    assert config.precheck_first_contact is True
    assert config.max_inflight_connects == 1
    assert [p.text for p in config.background] == ["apm.local:8200", "10.9.0.0/16"]
    assert config.exclude[0].matches("127.0.0.1", 6379)
    first, second = config.overrides
    assert first.pattern.matches("LDAP.corp", 389)
    assert (first.connect_timeout, first.precheck) == (0.5, Precheck("none"))
    assert second.background is True
    assert second.pattern.matches("::1", 5)
    assert config.integrations == ("socket", "httpx")
    assert config.max_endpoints == 50
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONNGUARD_ENABLED", "maybe"),
        ("CONNGUARD_MODE", "block"),
        ("CONNGUARD_CONNECT_TIMEOUT", "0"),
        ("CONNGUARD_CONNECT_TIMEOUT", "-1"),
        ("CONNGUARD_CONNECT_TIMEOUT", "fast"),
        ("CONNGUARD_CONNECT_TIMEOUT", "nan"),
        ("CONNGUARD_CONNECT_TIMEOUT", "inf"),
        ("CONNGUARD_MIN_CONNECT_TIMEOUT", "0"),
        ("CONNGUARD_FAILURE_THRESHOLD", "0"),
        ("CONNGUARD_FAILURE_THRESHOLD", "2.5"),
        ("CONNGUARD_OPEN_SECONDS", "never"),
        ("CONNGUARD_MAX_OPEN_SECONDS", "-5"),
        ("CONNGUARD_PRECHECK", "smtp"),
        ("CONNGUARD_PRECHECK", "udp-echo:0"),
        ("CONNGUARD_PRECHECK", "udp-echo:x"),
        ("CONNGUARD_PRECHECK", "tcp:80"),
        ("CONNGUARD_PRECHECK_FIRST_CONTACT", "2"),
        ("CONNGUARD_MAX_INFLIGHT_CONNECTS", "-1"),
        ("CONNGUARD_MAX_INFLIGHT_CONNECTS", "one"),
        ("CONNGUARD_BACKGROUND", "host:port"),
        ("CONNGUARD_BACKGROUND", "10.0.0.0/33"),
        ("CONNGUARD_INCLUDE", "h:70000"),
        ("CONNGUARD_EXCLUDE", "::1:80"),
        ("CONNGUARD_EXCLUDE", "a*b:80"),
        ("CONNGUARD_OVERRIDES", "h:1 connect_timeout=0"),
        ("CONNGUARD_OVERRIDES", "h:1 colour=blue"),
        ("CONNGUARD_OVERRIDES", "h:1 priority=urgent"),
        ("CONNGUARD_OVERRIDES", "h:1"),
        ("CONNGUARD_OVERRIDES", "h:1 precheck"),
        ("CONNGUARD_INTEGRATIONS", "socket,grpc"),
        ("CONNGUARD_MAX_ENDPOINTS", "0"),
        ("CONNGUARD_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_variable_value_and_accepted(variable: str, value: str) -> None:
    """A bad value raises ConfigError naming the variable, the value and what is accepted."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({variable: value})
    message = str(info.value)
    assert variable in message
    assert repr(value) in message
    assert "accepted:" in message


def test_floor_above_ceiling_is_rejected() -> None:
    """The adaptive deadline's floor may not exceed its ceiling."""
    with pytest.raises(ConfigError, match="CONNGUARD_MIN_CONNECT_TIMEOUT"):
        Config.from_env({"CONNGUARD_CONNECT_TIMEOUT": "1", "CONNGUARD_MIN_CONNECT_TIMEOUT": "2"})


def test_backoff_cap_below_first_wait_is_rejected() -> None:
    """The backoff cap must be at least the first wait."""
    with pytest.raises(ConfigError, match="CONNGUARD_MAX_OPEN_SECONDS"):
        Config.from_env({"CONNGUARD_OPEN_SECONDS": "10", "CONNGUARD_MAX_OPEN_SECONDS": "5"})


def test_keywords_override_environment() -> None:
    """install() keywords win over variables and accept ready values."""
    config = Config.from_env(
        {"CONNGUARD_CONNECT_TIMEOUT": "9", "CONNGUARD_MIN_CONNECT_TIMEOUT": "0.1"},
        connect_timeout=0.5,
        background=["apm:8200", "10.0.0.0/8"],
        enabled=True,
        failure_threshold=2,
    )
    assert config.connect_timeout == 0.5
    assert config.failure_threshold == 2
    assert [p.text for p in config.background] == ["apm:8200", "10.0.0.0/8"]


def test_callable_precheck_keyword() -> None:
    """A Python callable is accepted as a pre-check through the API."""

    def always(host: str, port: int, timeout: float) -> bool:
        return True

    config = Config.from_env({}, precheck=always)
    assert config.precheck.kind == "callable"
    assert config.precheck.function is always


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("connect_timeout", -1),
        ("connect_timeout", "x"),
        ("enabled", "perhaps"),
        ("failure_threshold", True),
        ("mode", 3),
        ("precheck", 5),
    ],
)
def test_bad_keyword_value(keyword: str, value: object) -> None:
    """A bad keyword value raises ConfigError naming the keyword."""
    with pytest.raises(ConfigError, match=keyword):
        Config.from_env({}, **{keyword: value})


def test_unknown_keyword_suggests_the_close_one() -> None:
    """A misspelt keyword is an error that suggests the intended one."""
    with pytest.raises(ConfigError, match="did you mean 'connect_timeout'"):
        Config.from_env({}, conect_timeout=1)


def test_unknown_variable_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt CONNGUARD_ variable is reported with a suggestion."""
    with caplog.at_level(logging.WARNING, logger="connguard"):
        Config.from_env({"CONNGUARD_CONECT_TIMEOUT": "1"})
    assert "CONNGUARD_CONECT_TIMEOUT" in caplog.text
    assert "CONNGUARD_CONNECT_TIMEOUT" in caplog.text


def test_blank_variable_means_default() -> None:
    """An empty variable is treated as unset."""
    assert Config.from_env({"CONNGUARD_CONNECT_TIMEOUT": " "}).connect_timeout == 2.0


def test_sources_and_plain_view() -> None:
    """sources() tells default from environment; as_dict() is JSON-ready."""
    environ = {"CONNGUARD_MODE": "observe", "CONNGUARD_BACKGROUND": "a:1"}
    config = Config.from_env(environ)
    sources = config.sources(environ)
    assert sources["mode"] == "environment"
    assert sources["connect_timeout"] == "default"
    plain = config.as_dict()
    assert plain["background"] == ["a:1"]
    assert plain["precheck"] == "tcp"


def test_every_setting_documents_a_reason() -> None:
    """Each setting has a variable, accepted values and a reason for its default."""
    assert {s.field for s in SETTINGS} == set(Config.__dataclass_fields__) - {"derived"}
    for setting in SETTINGS:
        assert setting.variable.startswith("CONNGUARD_")
        assert setting.accepts
        assert setting.reason


def test_install_raises_config_error_not_import() -> None:
    """A bad environment surfaces at install(), leaving connguard uninstalled."""
    with pytest.raises(ConfigError, match="CONNGUARD_MODE"):
        connguard.install(environ={"CONNGUARD_MODE": "loud"})
    assert not connguard.is_installed()
