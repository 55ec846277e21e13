"""Reversible patching shared by the integrations.

Two ways to patch an attribute:

- ``wrap()``: a wrapt ``FunctionWrapper`` (asyncio, httpx, ldap3: not hot).
- ``replace()``: a plain function (``functools.wraps``-style, ``__wrapped__`` set)
  for ``socket.socket.connect``/``connect_ex``, which every connect of the process
  goes through. wrapt's descriptor builds a ``BoundFunctionWrapper``, a bound
  method, an args tuple and a kwargs dict on every call; a plain function costs
  one Python frame (docs/benchmarks.md, "where the time went").

Every wrapper a patcher made stays a pass-through once ``restore()`` ran: when
someone stacked a plain monkeypatch on top of ours, we cannot take ours out of
their closure, but it then does nothing (``live`` emptied).

Restore puts back only what connguard installed: an inherited attribute
(``socket.socket.connect`` lives on ``_socket.socket``) is deleted rather than
re-set, and when another instrumenter (OpenTelemetry, ddtrace) wrapped on top of
ours, we splice our wrapper out of the chain instead of removing theirs.

``verify()`` (cheap: one dict lookup per patched attribute, never per connect)
notices a wrapper that was displaced: set back to the very original it wrapped
(a naive restore, as pytest-socket does after every test) puts ours back; anything
else standing there is left alone, logged once, and reported by ``displaced()``.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wrapt

__all__ = ["Factory", "Live", "Patcher", "as_unbound"]

log = logging.getLogger("connguard")

_MAX_CHAIN = 32  # wrappers stacked on one attribute; a bound on our walk

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
# A non-empty list while the patcher is installed; ``if live:`` is the cheapest
# test Python has (no call, no attribute lookup), and wrapt calls ``live.__len__``.
Live = list[bool]
# Makes the plain replacement function from (the original to call, the live flag).
Factory = Callable[[Callable[..., Any], Live], Callable[..., Any]]

# Descriptors that can be called unbound as f(instance, *args) with no binding.
_CALLABLE_UNBOUND = (types.FunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)


@dataclass(slots=True)
class _Patch:
    owner: Any
    attribute: str
    inherited: bool
    original: Any  # what vars(owner) held (None when inherited)
    resolved: Any  # what the attribute resolved to before us (the MRO's descriptor)
    installed: Any
    displaced_by: Any = None  # the object standing in our place, once logged


def _name(patch: _Patch) -> str:
    return f"{getattr(patch.owner, '__qualname__', patch.owner)}.{patch.attribute}"


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"


def _resolve(owner: Any, attribute: str) -> Any:
    """The raw descriptor ``owner.attribute`` finds (no binding)."""
    for klass in getattr(owner, "__mro__", (owner,)):
        value = vars(klass).get(attribute)
        if value is not None:
            return value
    raise AttributeError(f"{owner!r} has no attribute {attribute!r}")


def as_unbound(descriptor: Any) -> Callable[..., Any]:
    """A callable ``f(instance, *args)`` that behaves as ``instance.attribute(*args)``.

    C method descriptors and plain functions are that already (no allocation per
    call); anything else (another instrumenter's wrapt proxy) is bound per call so
    that it sees its instance as it would without us.
    """
    if type(descriptor) in _CALLABLE_UNBOUND:  # not isinstance(): proxies lie about __class__
        return descriptor  # type: ignore[no-any-return]

    def bound_call(instance: Any, *args: Any, **kwargs: Any) -> Any:
        return descriptor.__get__(instance, type(instance))(*args, **kwargs)

    return bound_call


class Patcher:
    """Records each patch so that ``restore()`` can undo exactly it."""

    def __init__(self) -> None:
        self._patches: list[_Patch] = []
        self.live: Live = [True]

    def wrap(self, owner: Any, attribute: str, wrapper: Wrapper) -> None:
        """Patch with a wrapt ``FunctionWrapper`` (a pass-through after ``restore()``)."""
        inherited = attribute not in vars(owner)
        original = vars(owner).get(attribute)
        resolved = _resolve(owner, attribute)
        wrapt.wrap_object(
            owner, attribute, wrapt.FunctionWrapper, (wrapper,), {"enabled": self.live.__len__}
        )
        installed = vars(owner)[attribute]
        self._patches.append(_Patch(owner, attribute, inherited, original, resolved, installed))

    def replace(self, owner: Any, attribute: str, factory: Factory) -> Callable[..., Any]:
        """Patch with the plain function ``factory(original, live)``; returns it.

        ``original`` is called as ``original(instance, *args)``.
        """
        inherited = attribute not in vars(owner)
        original = vars(owner).get(attribute)
        resolved = _resolve(owner, attribute)
        function = factory(as_unbound(resolved), self.live)
        functools.update_wrapper(function, resolved)  # name, doc, __wrapped__
        setattr(owner, attribute, function)
        self._patches.append(_Patch(owner, attribute, inherited, original, resolved, function))
        return function

    def verify(self) -> list[str]:
        """Put back wrappers a naive restore removed; return the attributes displaced."""
        displaced = []
        for patch in self._patches:
            try:
                if not _check(patch):
                    displaced.append(_name(patch))
            except Exception:  # a check must never break its caller (status(), a tick)
                log.debug("connguard could not check %s", _name(patch), exc_info=True)
        return displaced

    def restore(self) -> None:
        self.live.clear()  # first: every wrapper left behind is a pass-through from now
        while self._patches:
            patch = self._patches.pop()
            try:
                _unwrap(patch)
            except Exception:  # never let cleanup break the application
                log.exception("connguard could not restore %s", _name(patch))


def _current(patch: _Patch) -> Any:
    return vars(patch.owner).get(patch.attribute)


def _stacked_on_us(current: Any, installed: Any) -> bool:
    """Is ``installed`` in the ``__wrapped__`` chain below ``current``?"""
    proxy = current
    for _ in range(_MAX_CHAIN):
        try:
            proxy = proxy.__wrapped__
        except Exception:  # no chain, or a proxy that raises: not ours
            return False
        if proxy is installed:
            return True
    return False


def _check(patch: _Patch) -> bool:
    """True when our wrapper still sees the attribute's calls (re-installing it if needed)."""
    current = _current(patch)
    if current is patch.installed:
        patch.displaced_by = None
        return True
    if current is patch.resolved or (current is None and patch.inherited):
        # A naive restore put back exactly what we wrapped: wrap it again.
        setattr(patch.owner, patch.attribute, patch.installed)
        log.info("connguard: %s had been set back to its original; guarded again", _name(patch))
        patch.displaced_by = None
        return True
    if _stacked_on_us(current, patch.installed):
        return True  # another instrumenter wrapped on top of us: calls still reach us
    if patch.displaced_by is not current:
        patch.displaced_by = current
        log.warning(
            "connguard: %s was replaced by %s; connguard leaves it alone, so the calls "
            "that go through it are not guarded",
            _name(patch),
            _describe(current),
        )
    return False


def _unwrap(patch: _Patch) -> None:
    current = _current(patch)
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
            # type(), not isinstance(): a wrapt proxy claims its wrapped object's class
            if type(proxy) is not types.FunctionType:
                proxy.__wrapped__ = patch.installed.__wrapped__
                return
            break  # a plain function's __wrapped__ is informative only: no splice
        proxy = inner
    log.info(
        "connguard's wrapper on %s is held by %s; it stays there as a pass-through",
        _name(patch),
        _describe(current),
    )
