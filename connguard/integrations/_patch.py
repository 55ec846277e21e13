"""Reversible wrapt patching shared by the integrations.

Restore puts back only what connguard installed: an inherited attribute
(``socket.socket.connect`` lives on ``_socket.socket``) is deleted rather than
re-set, and when another instrumenter (OpenTelemetry, ddtrace) wrapped on top of
ours, we splice our wrapper out of the chain instead of removing theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wrapt

__all__ = ["Patcher"]

log = logging.getLogger("connguard")

_MAX_CHAIN = 32  # wrappers stacked on one attribute; a bound on our walk

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]


@dataclass(slots=True)
class _Patch:
    owner: Any
    attribute: str
    inherited: bool
    original: Any
    installed: Any


class Patcher:
    """Records each wrap so that ``restore()`` can undo exactly it."""

    def __init__(self) -> None:
        self._patches: list[_Patch] = []

    def wrap(self, owner: Any, attribute: str, wrapper: Wrapper) -> None:
        inherited = attribute not in vars(owner)
        original = vars(owner).get(attribute)
        wrapt.wrap_object(owner, attribute, wrapt.FunctionWrapper, (wrapper,))
        self._patches.append(_Patch(owner, attribute, inherited, original, vars(owner)[attribute]))

    def restore(self) -> None:
        while self._patches:
            patch = self._patches.pop()
            try:
                _unwrap(patch)
            except Exception:  # never let cleanup break the application
                log.exception(
                    "connguard could not restore %s.%s",
                    getattr(patch.owner, "__name__", patch.owner),
                    patch.attribute,
                )

    def __bool__(self) -> bool:
        return bool(self._patches)


def _unwrap(patch: _Patch) -> None:
    current = vars(patch.owner).get(patch.attribute)
    if current is patch.installed:
        if patch.inherited:
            delattr(patch.owner, patch.attribute)
        else:
            setattr(patch.owner, patch.attribute, patch.original)
        return
    # Someone wrapped on top of us: find the proxy directly above ours and splice.
    proxy = current
    for _ in range(_MAX_CHAIN):
        inner = getattr(proxy, "__wrapped__", None)
        if inner is None:
            break
        if inner is patch.installed:
            proxy.__wrapped__ = patch.installed.__wrapped__
            return
        proxy = inner
    log.warning(
        "connguard's wrapper on %s.%s was replaced by something else; left alone",
        getattr(patch.owner, "__name__", patch.owner),
        patch.attribute,
    )
