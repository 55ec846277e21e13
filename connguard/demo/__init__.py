"""``connguard demo``: the field incident on loopback, before and after connguard.

Three processes run side by side for ``--seconds`` (default 24), each on an
emulated host that lets one TCP connect be in SYN_SENT at a time
(``connguard.testing.serialized_host(1)``):

* **no guard**: an APM-style agent reconnects every second to a dead collector
  (a loopback blackhole) with Windows' 21 s connect timeout; logins (5 per
  second, a fresh connection each) wait behind every attempt;
* **connguard**: the same process with ``connguard.install()`` and defaults;
* **connguard lane**: plus ``CONNGUARD_MAX_INFLIGHT_CONNECTS=1`` and the
  collector in ``CONNGUARD_BACKGROUND``.

Logins bind to a throw-away OpenLDAP server when ``slapd`` is installed (and
ldap3 is importable), otherwise to an embedded loopback login service that
also takes a fresh TCP connection per login. No root needed; all traffic stays
on 127.0.0.1.

The rooms: ``scenario`` (the agent, the login load, the summary; also used by
``benchmarks/field_incident.py`` and the tests), ``slapd`` (the throw-away
OpenLDAP launcher), ``login`` (the ldap3 login and the embedded login service),
``progress`` (the live display and the table), ``runner`` (the rows as child
processes). The command line is ``connguard.cli.demo``. None of this is part of
connguard's API.
"""
