"""Reliability tests may be heavy: the `slow` ones run on demand (`pytest -m slow`).

The private compile cache comes from tests/conftest.py.
"""
