"""Installs the fake Hub (`fake_hub.py`) in every Python process started with this folder on PYTHONPATH and
FAKE_HUB set."""

import os

if os.environ.get("FAKE_HUB"):
    import fake_hub

    fake_hub.install(os.environ["FAKE_HUB"])
