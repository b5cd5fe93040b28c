"""The local Hub endpoint fixture (``hub``): see fake_hub.py."""
from .fake_hub import hub  # noqa: F401
