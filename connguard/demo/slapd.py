"""A throw-away OpenLDAP server (slapd) on loopback, for the demo, tests and benchmarks.

``running_slapd()`` writes a slapd.conf, loads a base tree and one user with
``slapadd`` (offline, no network), starts ``slapd -d 0`` in the foreground on
``ldap://HOST:PORT/`` and stops it by PID on exit. Everything lives in a
temporary directory; the system's ``/etc/ldap`` configuration is only read for
its schema files, never changed.

Readiness is checked with the C-level ``connect_ex`` so that neither
connguard nor ``connguard.testing.serialized_host`` sees (or counts) the
probe connects made while slapd starts.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
USER_DN = f"uid=alice,ou=people,{SUFFIX}"
USER_PASSWORD = "alice-secret"

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3

_SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
_MODULE_DIRS = (
    "/usr/lib/ldap",
    "/usr/lib64/openldap",
    "/usr/lib/openldap",
    "/usr/libexec/openldap",
)

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
mail: alice@example.com
userPassword: {USER_PASSWORD}
"""


class SlapdError(RuntimeError):
    """slapd could not be configured, started or stopped."""


def _find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise SlapdError(f"{name} not found (install the slapd package)")
    return found


def available() -> bool:
    """slapd, slapadd and the core schema are installed."""
    try:
        _find_binary("slapd")
        _find_binary("slapadd")
    except SlapdError:
        return False
    return _first_dir(_SCHEMA_DIRS, "core.schema") is not None


def _first_dir(candidates: tuple[str, ...], must_contain: str) -> str | None:
    for directory in candidates:
        if (Path(directory) / must_contain).exists():
            return directory
    return None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        # The C method, not socket.socket.connect: bypass any installed wrapper.
        return _socket.socket.connect_ex(sock, (host, port)) == 0


class SlapdServer:
    """One slapd instance with its own config and database directory.

    ``start()`` and ``stop()`` may be called repeatedly; a restart keeps the
    same port and data (for recovery tests).
    """

    # Every instance holds the same tree (see _LDIF).
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    user_dn = USER_DN
    user_password = USER_PASSWORD
    suffix = SUFFIX

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._workdir = workdir
        self._slapd = _find_binary("slapd")
        self._proc: subprocess.Popen[bytes] | None = None
        self._configure()

    @property
    def url(self) -> str:
        """``ldap://HOST:PORT``, without a trailing slash (ldap3 rejects one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ldap://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running slapd, or ``None`` when stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _configure(self) -> None:
        schema = _first_dir(_SCHEMA_DIRS, "core.schema")
        if schema is None:
            raise SlapdError(f"OpenLDAP schema files not found in {_SCHEMA_DIRS}")
        db = self._workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        lines = [f"include {schema}/{name}.schema" for name in ("core", "cosine", "inetorgperson")]
        lines += [
            f"pidfile {self._workdir / 'slapd.pid'}",
            f"argsfile {self._workdir / 'slapd.args'}",
        ]
        # back_mdb is a loadable module on Debian/Ubuntu, built in elsewhere.
        modules = _first_dir(_MODULE_DIRS, "back_mdb.so")
        if modules is not None:
            lines += [f"modulepath {modules}", "moduleload back_mdb"]
        lines += [
            "database mdb",
            "maxsize 104857600",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ADMIN_DN}"',
            f"rootpw {ADMIN_PASSWORD}",
            f"directory {db}",
            "access to attrs=userPassword by self write by anonymous auth by * none",
            "access to * by * read",
        ]
        self._conf = self._workdir / "slapd.conf"
        self._conf.write_text("\n".join(lines) + "\n")
        ldif = self._workdir / "data.ldif"
        ldif.write_text(_LDIF)
        # Offline load: no network, no dependency on ldap3 or on any patch.
        result = subprocess.run(
            [_find_binary("slapadd"), "-f", str(self._conf), "-l", str(ldif)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise SlapdError(f"slapadd failed: {result.stderr.decode(errors='replace')}")

    def start(self) -> None:
        """Start slapd (on the same port as before, if it ran already); wait until it accepts."""
        if self.running:
            return
        fixed = self.port != 0
        for _ in range(1 if fixed else _PORT_ATTEMPTS):
            if not fixed:
                self.port = _free_port(self.host)
            try:
                self._spawn()
                return
            except SlapdError:
                if fixed:
                    raise
                self.port = 0  # someone took the port between probe and bind: pick another
        raise SlapdError(f"slapd did not start after {_PORT_ATTEMPTS} ports")

    def _spawn(self) -> None:
        log = self._workdir / "slapd.stderr"
        with log.open("wb") as err:
            # -d 0 keeps slapd in the foreground, so the PID we hold is slapd's.
            self._proc = subprocess.Popen(
                [self._slapd, "-f", str(self._conf), "-h", self.url + "/", "-d", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _accepts(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        output = log.read_text(errors="replace").strip()
        raise SlapdError(
            f"slapd did not accept connections on {self.url}: {output or '(no output)'}"
        )

    def stop(self) -> None:
        """Stop slapd by PID: SIGTERM, wait, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT)

    def __repr__(self) -> str:
        return f"SlapdServer({self.url!r}, pid={self.pid})"


@contextlib.contextmanager
def running_slapd(
    port: int = 0, host: str = "127.0.0.1", *, workdir: str | os.PathLike[str] | None = None
) -> Iterator[SlapdServer]:
    """Start a throw-away slapd on ``ldap://host:port/`` and stop it on exit.

    ``port=0`` picks a free port (kept across restarts). ``workdir`` places
    the config and database there instead of a fresh temporary directory
    (useful where an AppArmor profile confines slapd to certain paths).
    The directory tree holds a base entry, ``ou=people`` and ``USER_DN``.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slapd-")))
        else:
            path = Path(workdir)
        server = SlapdServer(path, host=host, port=port)
        stack.callback(server.stop)
        server.start()
        yield server
