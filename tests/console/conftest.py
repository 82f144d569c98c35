"""The support desk's fixture (tests/support/conftest.py) for the console's tests too."""

from tests.support.conftest import desk

__all__ = ["desk"]
