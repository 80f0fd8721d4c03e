"""Pieces of `make bench`: load generation and the bare echo baseline."""
