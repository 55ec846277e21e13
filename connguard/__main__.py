"""``python -m connguard``: the same command line as the ``connguard`` script."""

from connguard.cli import main

raise SystemExit(main())
