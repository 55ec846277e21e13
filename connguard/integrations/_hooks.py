"""Patch a library now if it is imported, else the moment it is."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import wrapt

from .. import _api
from .._guard import Guard

__all__ = ["when_imported"]


def when_imported(guard: Guard, module_name: str, patch: Callable[[Any], None]) -> None:
    """Call ``patch(module)`` for ``module_name`` now or at its import.

    wrapt's post-import hooks cannot be unregistered, so the hook acts only while
    ``guard`` is still the installed one; and it never raises, since an exception
    there would break the application's import. ``patch`` runs contained too.
    """

    def contained(module: Any) -> None:
        try:
            patch(module)
        except Exception as exc:
            guard.contain(f"patching {module_name}", exc)

    def on_import(module: Any) -> None:
        try:
            if _api.current_guard() is guard:
                contained(module)
        except Exception as exc:
            guard.contain(f"import hook of {module_name}", exc)

    module = sys.modules.get(module_name)
    if module is not None:
        contained(module)
    else:
        wrapt.register_post_import_hook(on_import, module_name)
