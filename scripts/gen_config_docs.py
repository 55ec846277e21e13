"""Rewrite the variables table of docs/configuration.md from connguard's SETTINGS.

Run after changing a setting: ``.venv/bin/python scripts/gen_config_docs.py``.
tests/test_docs.py fails while the page is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from connguard._settings import reference_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_BLOCK = re.compile(r"(<!-- settings:begin[^>]*-->\n)(.*?)(<!-- settings:end -->)", re.S)


def render(text: str) -> str:
    """``text`` with the generated block replaced by the current table."""
    if not _BLOCK.search(text):
        raise SystemExit(f"{PAGE}: no settings:begin/settings:end markers")
    return _BLOCK.sub(lambda m: m.group(1) + reference_table() + m.group(3), text)


def main() -> int:
    text = PAGE.read_text()
    new = render(text)
    if new != text:
        PAGE.write_text(new)
        print(f"updated {PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
