"""The directory ``connguard run`` puts first on ``PYTHONPATH`` (see sitecustomize.py)."""
