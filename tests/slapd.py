"""The throw-away slapd of the tests and benchmarks: connguard's own launcher.

It ships in the package (``connguard._slapd``) because ``connguard demo`` uses it
too; this module keeps the short import path the tests and benchmarks use.
"""

from connguard._slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    SUFFIX,
    USER_DN,
    USER_PASSWORD,
    SlapdError,
    SlapdServer,
    available,
    running_slapd,
)

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "SUFFIX",
    "USER_DN",
    "USER_PASSWORD",
    "SlapdError",
    "SlapdServer",
    "available",
    "running_slapd",
]
