"""The command line, run as a real subprocess against real loopback sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import free_port

import connguard
from connguard import cli
from connguard.testing import blackhole, tcp_server, udp_echo_server

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="loopback blackhole needs Linux")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m connguard ARGS`` with a clean CONNGUARD_* environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNGUARD_")}
    base.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-m", "connguard", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def dead() -> Iterator[int]:
    with blackhole() as hole:
        yield hole.port


@pytest.fixture
def live() -> Iterator[int]:
    with tcp_server() as server:
        yield server.port


# --------------------------------------------------------------------------- #
# help
# --------------------------------------------------------------------------- #


def test_top_level_help_lists_every_command() -> None:
    """`connguard --help` exits 0 and names every command."""
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("doctor", "check", "config", "run", "status", "demo"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("doctor", ["--dead", "--live", "--timeout", "--max-slots", "--json", "exit codes"]),
        (
            "check",
            ["HOST:PORT", "--precheck", "udp-echo", "icmp", "--timeout", "--json", "exit codes"],
        ),
        ("config", ["--json", "exit codes", "source"]),
        ("run", ["CMD", "sitecustomize", "exit code"]),
        ("status", ["FILE", "--json", "exit codes"]),
    ],
)
def test_subcommand_help_is_complete(command: str, mentions: list[str]) -> None:
    """Each command's --help exits 0 and mentions its options and exit codes."""
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    for word in mentions:
        assert word in result.stdout, word
    assert "testing-serialized" not in result.stdout


def test_console_script_runs() -> None:
    """The `connguard` console script next to the interpreter answers --version."""
    script = shutil.which("connguard", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("connguard ")


# --------------------------------------------------------------------------- #
# doctor
# --------------------------------------------------------------------------- #


def doctor_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("doctor", "--json", "--timeout", "1", *args)
    report = json.loads(result.stdout)  # the whole of stdout is one object
    assert isinstance(report, dict)
    return result.returncode, report


@linux_only
def test_doctor_reports_no_serialization_on_a_normal_host() -> None:
    """Without the emulator a live connect does not wait behind dead ones: exit 0, no slots."""
    code, report = doctor_json()
    assert code == 0
    assert report["serialized"] is False
    assert report["slots"] is None
    assert report["conclusive"] is True
    assert [r["dead_connects"] for r in report["rounds"]] == [1, 2, 3, 4]
    assert not any(r["waited"] for r in report["rounds"])
    assert report["recommended_env"] == {"CONNGUARD_MAX_INFLIGHT_CONNECTS": "0"}
    assert any("loopback" in note for note in report["notes"])


@linux_only
def test_doctor_detects_one_slot_under_the_emulator() -> None:
    """Under a one-slot emulated host the live connect waits until the dead one is aborted."""
    code, report = doctor_json("--testing-serialized-slots", "1")
    assert code == 1
    assert report["serialized"] is True
    assert report["slots"] == 1
    first = report["rounds"][0]
    assert first["waited"] is True
    assert first["live_connect_seconds"] >= 0.9
    assert first["released_after_abort_seconds"] < 0.5
    assert report["recommended_env"]["CONNGUARD_MAX_INFLIGHT_CONNECTS"] == "1"


@linux_only
def test_doctor_estimates_two_slots() -> None:
    """With two emulated slots one pending dead connect is harmless and two make it wait."""
    code, report = doctor_json("--testing-serialized-slots", "2")
    assert code == 1
    assert report["slots"] == 2
    assert [r["waited"] for r in report["rounds"]] == [False, True]
    assert report["recommended_env"]["CONNGUARD_MAX_INFLIGHT_CONNECTS"] == "2"


@linux_only
def test_doctor_text_output_with_given_targets(dead: int, live: int) -> None:
    """--dead/--live are used as given, and the text names a verdict and the settings."""
    result = run_cli(
        "doctor",
        "--dead",
        f"127.0.0.1:{dead}",
        "--live",
        f"127.0.0.1:{live}",
        "--timeout",
        "1",
        "--max-slots",
        "2",
        "--testing-serialized-slots",
        "1",
    )
    assert result.returncode == 1, result.stderr
    assert f"dead target 127.0.0.1:{dead}, live target 127.0.0.1:{live}" in result.stdout
    assert "verdict: SERIALIZED with 1 slot(s)" in result.stdout
    assert "CONNGUARD_MAX_INFLIGHT_CONNECTS=1" in result.stdout
    assert result.stderr == ""  # no progress display when stderr is not a terminal


@linux_only
def test_doctor_shows_progress_on_a_terminal() -> None:
    """With stderr on a terminal doctor shows a live progress line; stdout stays one object."""
    import pty

    master, slave = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "connguard",
                "doctor",
                "--json",
                "--timeout",
                "0.5",
                "--max-slots",
                "1",
                "--testing-serialized-slots",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=60,
            check=False,
        )
        os.set_blocking(master, False)
        shown = os.read(master, 65536).decode()
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 1
    assert json.loads(result.stdout)["slots"] == 1
    assert "live connect waiting" in shown
    assert "\r" in shown


@linux_only
def test_doctor_measures_the_host_even_under_run() -> None:
    """Started through `connguard run`, doctor uninstalls connguard first and still measures."""
    result = run_cli(
        "run",
        "--",
        sys.executable,
        "-m",
        "connguard",
        "doctor",
        "--json",
        "--timeout",
        "0.5",
        "--max-slots",
        "1",
        "--testing-serialized-slots",
        "1",
    )
    assert result.returncode == 1, result.stderr
    assert "uninstalled it" in result.stderr
    assert json.loads(result.stdout)["slots"] == 1


@linux_only
def test_doctor_is_inconclusive_when_the_dead_target_answers(live: int) -> None:
    """A "dead" target that refuses proves nothing: exit 3 and say why."""
    code, report = doctor_json("--dead", f"127.0.0.1:{free_port()}", "--live", f"127.0.0.1:{live}")
    assert code == 3
    assert report["conclusive"] is False
    assert "dead target" in report["error"]
    assert report["recommended_env"] == {}


@linux_only
def test_doctor_is_inconclusive_when_the_live_target_is_down() -> None:
    """A live target that refuses makes the experiment meaningless: exit 3."""
    code, report = doctor_json("--live", f"127.0.0.1:{free_port()}")
    assert code == 3
    assert "live target" in report["error"]


def test_doctor_rejects_a_bad_target() -> None:
    """A target without a port is a usage error (exit 2)."""
    result = run_cli("doctor", "--dead", "127.0.0.1")
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


# --------------------------------------------------------------------------- #
# check
# --------------------------------------------------------------------------- #


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("check", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def test_check_live_endpoint_is_reachable(live: int) -> None:
    """A listening port is reachable, with a connect time: exit 0."""
    code, report = check_json(f"127.0.0.1:{live}")
    assert code == 0
    assert report["verdict"] == "reachable"
    assert report["addresses"][0]["seconds"] < 1.0


def test_check_closed_port_is_refused() -> None:
    """A port nobody listens on is refused: exit 1."""
    code, report = check_json(f"127.0.0.1:{free_port()}")
    assert code == 1
    assert report["verdict"] == "refused"


@linux_only
def test_check_blackhole_is_no_answer(dead: int) -> None:
    """A blackholed port gets no answer within --timeout: exit 1."""
    started = time.monotonic()
    code, report = check_json(f"127.0.0.1:{dead}", "--timeout", "0.5")
    assert code == 1
    assert report["verdict"] == "no answer (timeout)"
    assert 0.4 <= report["addresses"][0]["seconds"] < 3
    assert time.monotonic() - started < 10


def test_check_text_output(live: int) -> None:
    """The text form names the address, the connect result and the verdict."""
    result = run_cli("check", f"127.0.0.1:{live}")
    assert result.returncode == 0
    assert "127.0.0.1: tcp connect reachable" in result.stdout
    assert result.stdout.rstrip().endswith("verdict: reachable")


def test_check_udp_echo_precheck_answered(live: int) -> None:
    """udp-echo against a live echo server is answered, next to the TCP verdict."""
    with udp_echo_server() as echo:
        code, report = check_json(f"127.0.0.1:{live}", "--precheck", f"udp-echo:{echo.port}")
        assert echo.received == 1
    assert code == 0
    assert report["precheck"]["kind"] == f"udp-echo:{echo.port}"
    assert report["precheck"]["results"][0]["verdict"] == "answered"


def test_check_udp_echo_precheck_refused(live: int) -> None:
    """udp-echo to a closed UDP port reports refused (ICMP port unreachable)."""
    code, report = check_json(
        f"127.0.0.1:{live}", "--precheck", f"udp-echo:{free_port(socket.SOCK_DGRAM)}"
    )
    assert code == 0  # the exit code follows the TCP connect
    assert report["precheck"]["results"][0]["verdict"] == "refused"


def _ping_allowed() -> bool:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    except (OSError, ValueError):
        return False
    return any(low <= gid <= high for gid in [*os.getgroups(), os.getgid()])


@pytest.mark.skipif(sys.platform != "linux", reason="reads net.ipv4.ping_group_range")
def test_check_icmp_precheck_follows_ping_group_range(live: int) -> None:
    """icmp is answered on loopback when allowed, else explained via ping_group_range."""
    result = run_cli("check", f"127.0.0.1:{live}", "--precheck", "icmp")
    assert result.returncode == 0
    if _ping_allowed():
        assert "pre-check icmp answered" in result.stdout
    else:
        assert "pre-check icmp not permitted" in result.stdout
        assert "net.ipv4.ping_group_range" in result.stdout


@pytest.mark.root
@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2",
)
def test_check_icmp_answered_inside_a_namespace() -> None:
    """In a namespace whose ping_group_range allows it, ICMP echo to loopback is answered."""
    name = f"cgcli{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv4.ping_group_range=0 2147483647",
            ],
            check=True,
        )
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                sys.executable,
                "-m",
                "connguard",
                "check",
                "127.0.0.1:9",
                "--precheck",
                "icmp",
                "--json",
                "--timeout",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    report = json.loads(result.stdout)
    assert report["precheck"]["results"][0]["verdict"] == "answered"
    assert report["verdict"] == "refused"  # nothing listens on port 9 in there


def test_check_rejects_bad_arguments() -> None:
    """A missing port or an unknown pre-check is a usage error (exit 2)."""
    assert run_cli("check", "127.0.0.1").returncode == 2
    result = run_cli("check", "127.0.0.1:80", "--precheck", "smoke")
    assert result.returncode == 2
    assert "udp-echo" in result.stderr


# --------------------------------------------------------------------------- #
# config
# --------------------------------------------------------------------------- #


def test_config_shows_a_followed_value_as_derived() -> None:
    """CONNGUARD_CONNECT_TIMEOUT=0.5 alone is valid; the floor follows it and says so."""
    result = run_cli("config", "--json", env={"CONNGUARD_CONNECT_TIMEOUT": "0.5"})
    assert result.returncode == 0, result.stderr
    by_variable = {s["variable"]: s for s in json.loads(result.stdout)["settings"]}
    assert by_variable["CONNGUARD_MIN_CONNECT_TIMEOUT"]["value"] == 0.5
    assert by_variable["CONNGUARD_MIN_CONNECT_TIMEOUT"]["source"] == "derived"


def test_config_names_both_contradicting_variables() -> None:
    """Two given values that contradict each other exit 2 naming both variables."""
    result = run_cli(
        "config",
        env={"CONNGUARD_CONNECT_TIMEOUT": "1", "CONNGUARD_MIN_CONNECT_TIMEOUT": "2"},
    )
    assert result.returncode == 2
    assert "CONNGUARD_CONNECT_TIMEOUT" in result.stderr
    assert "CONNGUARD_MIN_CONNECT_TIMEOUT" in result.stderr


def test_config_shows_values_and_sources() -> None:
    """Set variables show as "environment" with their value, the rest as "default"."""
    result = run_cli(
        "config",
        "--json",
        env={"CONNGUARD_CONNECT_TIMEOUT": "2.5", "CONNGUARD_BACKGROUND": "127.0.0.1:8200"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True
    by_variable = {s["variable"]: s for s in report["settings"]}
    assert by_variable["CONNGUARD_CONNECT_TIMEOUT"]["value"] == 2.5
    assert by_variable["CONNGUARD_CONNECT_TIMEOUT"]["source"] == "environment"
    assert by_variable["CONNGUARD_BACKGROUND"]["value"] == ["127.0.0.1:8200"]
    assert by_variable["CONNGUARD_MODE"] == {
        "setting": "mode",
        "variable": "CONNGUARD_MODE",
        "value": "enforce",
        "source": "default",
    }


def test_config_text_output() -> None:
    """The text form lists each variable with source and value and ends with "valid."."""
    result = run_cli("config", env={"CONNGUARD_MODE": "observe"})
    assert result.returncode == 0
    line = next(x for x in result.stdout.splitlines() if "CONNGUARD_MODE" in x)
    assert line.split() == ["CONNGUARD_MODE", "environment", "observe"]
    assert result.stdout.rstrip().endswith("valid.")


def test_config_variable_names_match_the_library() -> None:
    """Every variable name `config` prints is the one Config.sources() reads for its setting."""
    result = run_cli("config", "--json")
    settings = json.loads(result.stdout)["settings"]
    assert {s["setting"] for s in settings} == set(connguard.Config().as_dict())
    for s in settings:
        sources = connguard.Config().sources({s["variable"]: "x"})
        assert sources[s["setting"]] == "environment", s


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CONNGUARD_CONNECT_TIMEOUT": "abc"}, ["CONNGUARD_CONNECT_TIMEOUT", "seconds"]),
        ({"CONNGUARD_MODE": "loud"}, ["CONNGUARD_MODE", "enforce, observe"]),
        (
            {"CONNGUARD_CONNECT_TIMEOUT": "1", "CONNGUARD_MIN_CONNECT_TIMEOUT": "2"},
            ["CONNGUARD_MIN_CONNECT_TIMEOUT", "CONNGUARD_CONNECT_TIMEOUT"],
        ),
    ],
)
def test_config_rejects_bad_values(env: dict[str, str], named: list[str]) -> None:
    """A bad value exits 2 with the ConfigError message, naming the variable."""
    result = run_cli("config", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    for word in named:
        assert word in result.stderr


def test_config_json_reports_invalid() -> None:
    """With --json a bad configuration is also one object on stdout, valid false."""
    result = run_cli("config", "--json", env={"CONNGUARD_FAILURE_THRESHOLD": "0"})
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert "CONNGUARD_FAILURE_THRESHOLD" in report["error"]


def test_config_warns_about_unknown_variables() -> None:
    """A misspelt variable is reported (with a suggestion) but does not fail."""
    result = run_cli("config", "--json", env={"CONNGUARD_CONECT_TIMEOUT": "1"})
    assert result.returncode == 0
    assert json.loads(result.stdout)["unknown_variables"] == ["CONNGUARD_CONECT_TIMEOUT"]
    assert "did you mean CONNGUARD_CONNECT_TIMEOUT" in result.stderr


# --------------------------------------------------------------------------- #
# run
# --------------------------------------------------------------------------- #

CHILD = """\
import json, os, socket, sys, time
import connguard
if os.environ.get("CHILD_TIMEOUT"):
    socket.setdefaulttimeout(float(os.environ["CHILD_TIMEOUT"]))
outcomes = []
for _ in range(2):
    started = time.monotonic()
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", int(sys.argv[1])))
        outcomes.append(["connected", time.monotonic() - started])
    except OSError as exc:
        outcomes.append([type(exc).__name__, time.monotonic() - started])
    finally:
        sock.close()
print(json.dumps({
    "installed": connguard.is_installed(),
    "own_sitecustomize": os.environ.get("CHILD_SITECUSTOMIZE"),
    "bootstrap_on_path": any("_bootstrap" in entry for entry in sys.path),
    "outcomes": outcomes,
}))
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def child(tmp_path: Path) -> tuple[Path, Path]:
    """A child script plus a directory holding the child's own sitecustomize."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['CHILD_SITECUSTOMIZE'] = 'ran'\n")
    return script, site


@linux_only
def test_run_guards_the_child(child: tuple[Path, Path], dead: int) -> None:
    """Under `run` a second connect to a blackhole fails fast; sitecustomize and exit code kept."""
    script, site = child
    result = run_cli(
        "run",
        "--",
        sys.executable,
        str(script),
        str(dead),
        "7",
        env={
            "PYTHONPATH": str(site),
            "CONNGUARD_CONNECT_TIMEOUT": "0.5",
            "CONNGUARD_MIN_CONNECT_TIMEOUT": "0.2",
        },
    )
    assert result.returncode == 7, result.stderr
    report = json.loads(result.stdout)
    assert report["installed"] is True
    assert report["own_sitecustomize"] == "ran"
    assert report["bootstrap_on_path"] is False
    (first, first_s), (second, second_s) = report["outcomes"]
    assert first == "ConnectDeadlineExceeded"
    assert 0.3 <= first_s < 3
    assert second == "EndpointTimedOut"  # fails fast as the timeout it follows
    assert second_s < 0.1


@linux_only
def test_run_without_guard_waits_each_time(child: tuple[Path, Path], dead: int) -> None:
    """Control: with CONNGUARD_ENABLED=0 the child is not guarded and both connects time out."""
    script, site = child
    result = run_cli(
        "run",
        "--",
        sys.executable,
        str(script),
        str(dead),
        "0",
        env={"PYTHONPATH": str(site), "CONNGUARD_ENABLED": "0", "CHILD_TIMEOUT": "0.3"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["installed"] is False
    assert report["own_sitecustomize"] == "ran"
    assert [o[0] for o in report["outcomes"]] == ["TimeoutError", "TimeoutError"]
    assert all(o[1] >= 0.25 for o in report["outcomes"])


def test_run_refuses_a_bad_configuration(child: tuple[Path, Path]) -> None:
    """An invalid configuration stops `run` before the child starts (exit 2)."""
    script, _ = child
    result = run_cli(
        "run", "--", sys.executable, str(script), "9", "0", env={"CONNGUARD_MODE": "loud"}
    )
    assert result.returncode == 2
    assert "CONNGUARD_MODE" in result.stderr
    assert result.stdout == ""


def test_run_reports_a_missing_command() -> None:
    """A command that does not exist exits 127, as a shell would."""
    result = run_cli("run", "--", "connguard-no-such-command-xyz")
    assert result.returncode == 127
    assert "command not found" in result.stderr


def test_run_needs_a_command() -> None:
    """`run` without a command is a usage error."""
    assert run_cli("run").returncode == 2


# --------------------------------------------------------------------------- #
# status and demo
# --------------------------------------------------------------------------- #


@pytest.mark.usefixtures("every_failure_counts")
def test_format_status_renders_real_records() -> None:
    """format_status() shows an endpoint connguard saw refuse, with its error."""
    port = free_port()
    connguard.install(environ={}, integrations="socket")
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    table = cli.format_status(connguard.status())
    header, row = table.splitlines()
    assert header.split()[:3] == ["endpoint", "state", "priority"]
    assert row.startswith(f"127.0.0.1:{port}")
    assert "open" in row.split()
    assert "refused" in row


def test_format_status_without_records() -> None:
    """No records render as one explanatory line."""
    assert cli.format_status([]) == "no guarded endpoint seen yet"


def test_status_renders_records_from_stdin() -> None:
    """`connguard status -` renders a JSON dump of status() piped in."""
    records = [
        {
            "endpoint": "127.0.0.1:389",
            "state": "open",
            "failures": 3,
            "connect_budget": 1.5,
            "retry_after": 4.2,
            "last_error": "timeout: x",
        }
    ]
    result = subprocess.run(
        [sys.executable, "-m", "connguard", "status", "-"],
        input=json.dumps(records),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "127.0.0.1:389" in result.stdout
    assert "4.20 s" in result.stdout


def test_status_rejects_bad_input(tmp_path: Path) -> None:
    """A file that is not a JSON list of records is exit 2."""
    path = tmp_path / "bad.json"
    path.write_text('{"not": "a list"}')
    result = run_cli("status", str(path))
    assert result.returncode == 2
    assert "JSON list" in result.stderr


def test_status_in_a_fresh_process_explains_itself() -> None:
    """Without input, status says that state is per process."""
    result = run_cli("status")
    assert result.returncode == 0
    assert "per process" in result.stderr


def test_demo_goes_through_the_parser() -> None:
    """`demo --help` is the demo's own argparse help; a bad --seconds is a usage error."""
    result = run_cli("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: connguard demo")
    for word in ("--seconds", "--dead-connect", "--login", "exit codes"):
        assert word in result.stdout, word
    assert "--child" not in result.stdout
    bad = run_cli("demo", "--seconds", "600")
    assert bad.returncode == 2
    assert "outside 3..50" in bad.stderr
