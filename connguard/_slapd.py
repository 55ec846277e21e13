"""A throw-away OpenLDAP server on loopback, for ``connguard demo``.

The same approach as the test suite's ``tests/slapd.py`` (which is not shipped):
a slapd.conf and an mdb database in a temporary directory, one user loaded
offline with ``slapadd``, ``slapd -d 0`` in the foreground, stopped by PID.
The system's ``/etc/ldap`` is only read for its schema files.
"""

from __future__ import annotations

import _socket
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["USER_DN", "USER_PASSWORD", "Slapd", "available", "running_slapd"]

SUFFIX = "dc=example,dc=com"
USER_DN = f"uid=alice,ou=people,{SUFFIX}"
USER_PASSWORD = "alice-secret"
_SBIN = "/usr/sbin:/usr/local/sbin:/sbin"
_SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
_MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap",
                "/usr/libexec/openldap")  # fmt: skip
_START_TIMEOUT = 10.0
_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: {USER_DN}
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
userPassword: {USER_PASSWORD}
"""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def _first_dir(candidates: tuple[str, ...], must_contain: str) -> str | None:
    return next((d for d in candidates if (Path(d) / must_contain).exists()), None)


def available() -> bool:
    """slapd, slapadd and the core schema are installed."""
    return bool(_which("slapd") and _which("slapadd") and _first_dir(_SCHEMA_DIRS, "core.schema"))


@dataclass(frozen=True)
class Slapd:
    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"


def _config(workdir: Path) -> Path:
    schema = _first_dir(_SCHEMA_DIRS, "core.schema")
    lines = [f"include {schema}/{name}.schema" for name in ("core", "cosine", "inetorgperson")]
    lines += [f"pidfile {workdir / 'slapd.pid'}", f"argsfile {workdir / 'slapd.args'}"]
    modules = _first_dir(_MODULE_DIRS, "back_mdb.so")
    if modules is not None:  # a loadable module on Debian/Ubuntu, built in elsewhere
        lines += [f"modulepath {modules}", "moduleload back_mdb"]
    (workdir / "db").mkdir()
    lines += [
        "database mdb",
        "maxsize 104857600",
        f'suffix "{SUFFIX}"',
        f"directory {workdir / 'db'}",
        "access to attrs=userPassword by self write by anonymous auth by * none",
        "access to * by * read",
    ]
    conf = workdir / "slapd.conf"
    conf.write_text("\n".join(lines) + "\n")
    (workdir / "data.ldif").write_text(_LDIF)
    subprocess.run(
        [str(_which("slapadd")), "-f", str(conf), "-l", str(workdir / "data.ldif")],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return conf


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        # The C-level method: no wrapper (connguard, the emulator) sees this probe.
        return _socket.socket.connect_ex(sock, (host, port)) == 0


@contextlib.contextmanager
def running_slapd(host: str = "127.0.0.1") -> Iterator[Slapd]:
    """Start slapd on a free loopback port; stop it by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="connguard-slapd-") as tmp:
        workdir = Path(tmp)
        conf = _config(workdir)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
        proc = subprocess.Popen(
            [str(_which("slapd")), "-f", str(conf), "-h", f"ldap://{host}:{port}/", "-d", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while not _accepts(host, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"slapd did not start on {host}:{port}")
                time.sleep(0.02)
            yield Slapd(host, port, proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
