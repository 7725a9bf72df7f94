"""Test utilities: the Mixer contract as checks (contract.py)."""
