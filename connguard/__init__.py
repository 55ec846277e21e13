"""connguard: keep applications from stalling behind dead network endpoints.

    import connguard
    connguard.install()   # reads CONNGUARD_* environment variables

See https://github.com/connguard/connguard (docs/) for the full story.
"""

from __future__ import annotations

from ._api import displaced as displaced
from ._api import install as install
from ._api import is_installed as is_installed
from ._api import lane_status as lane_status
from ._api import reset as reset
from ._api import status as status
from ._api import uninstall as uninstall
from ._config import Config as Config
from ._errors import ConfigError as ConfigError
from ._errors import ConnectDeadlineExceeded as ConnectDeadlineExceeded
from ._errors import ConnguardError as ConnguardError
from ._errors import EndpointRefused as EndpointRefused
from ._errors import EndpointTimedOut as EndpointTimedOut
from ._errors import EndpointUnavailable as EndpointUnavailable
from ._errors import EndpointUnreachable as EndpointUnreachable
from ._errors import LaneTimeout as LaneTimeout

__all__ = [
    "Config",
    "ConfigError",
    "ConnectDeadlineExceeded",
    "ConnguardError",
    "EndpointRefused",
    "EndpointTimedOut",
    "EndpointUnavailable",
    "EndpointUnreachable",
    "LaneTimeout",
    "displaced",
    "install",
    "is_installed",
    "lane_status",
    "reset",
    "status",
    "uninstall",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("connguard")
        except PackageNotFoundError:  # running from a source tree
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
