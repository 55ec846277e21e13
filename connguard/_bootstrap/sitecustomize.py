"""connguard's zero-code start-up hook, used by ``connguard run -- CMD ...``.

``connguard run`` puts this directory first on ``PYTHONPATH``; Python's ``site``
module then imports this file as ``sitecustomize`` when the interpreter starts.
It first hands over to the ``sitecustomize`` the program would have run without
connguard (the next one on ``sys.path``), then installs connguard:

* the program's own start-up code still runs, as with ``opentelemetry-instrument``
  and ``ddtrace-run``;
* installing afterwards means connguard sees ``CONNGUARD_*`` variables set there
  and patches the socket class that a ``gevent.monkey.patch_all()`` there put in
  place (patching before it would be lost), and it sits on top of any test
  emulator installed there.

A problem inside connguard never stops the program: it runs unguarded and says
why on stderr. ``python -I``, ``-E`` and ``-S`` skip ``PYTHONPATH`` or
sitecustomize altogether, and then connguard is not installed.
"""

from __future__ import annotations

import importlib
import os
import sys


def _same_dir(entry: str, here: str) -> bool:
    try:
        return os.path.samefile(entry or os.curdir, here)
    except OSError:
        return False


def _chain_to_next_sitecustomize() -> None:
    """Import the sitecustomize that this one shadows, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    # Drop our directory for good: nothing else in it is meant to be importable.
    sys.path[:] = [entry for entry in sys.path if not _same_dir(entry, here)]
    try:
        importlib.import_module("sitecustomize")  # the program's own, further down
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise  # site.py reports it, exactly as without connguard
    finally:
        # importlib expects an entry under our name once this file finishes.
        if ours is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = ours


def _install() -> None:
    try:
        import connguard
    except ImportError as exc:
        sys.stderr.write(
            f"connguard run: {sys.executable} cannot import connguard ({exc}); "
            "the program runs unguarded\n"
        )
        return
    try:
        connguard.install()
    except Exception as exc:  # never break the program's start
        sys.stderr.write(f"connguard run: not installed, the program runs unguarded: {exc}\n")


try:
    _chain_to_next_sitecustomize()
finally:
    _install()
