"""Hostile values for every CONNGUARD_* variable: ConfigError or success, nothing else."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connguard
from connguard import ConfigError
from connguard._config import SETTINGS

NASTY = st.sampled_from(
    [
        "",
        " ",
        ",",
        ";",
        "0",
        "-1",
        "1e10",
        "1e308",
        "1e309",
        "inf",
        "-inf",
        "nan",
        "2**70",
        "99999999999999999999999",
        "\x00",
        "127.0.0.1\x00:80",
        "a:1 precheck=icmp",
        "connect_timeout=1 connect_timeout=2",
        "*:* connect_timeout=nan",
        "::1:99999",
        "[::1]:-5",
        "10.0.0.0/99",
        "udp-echo:70000",
        "tcp,icmp",
        "é" * 50,
        "x" * 5000,
    ]
)
VALUES = st.one_of(NASTY, st.text(max_size=40))


@pytest.mark.parametrize("variable", [s.variable for s in SETTINGS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES)
def test_install_accepts_or_raises_config_error(variable: str, value: str) -> None:
    """install() with any value either succeeds or raises ConfigError naming the variable."""
    level = logging.getLogger("connguard").level
    message = None
    try:
        assert isinstance(connguard.install(environ={variable: value}), bool)
    except ConfigError as exc:
        message = str(exc)
    finally:
        connguard.uninstall()
        logging.getLogger("connguard").setLevel(level)
    assert message is None or message  # a ConfigError always says what was wrong
