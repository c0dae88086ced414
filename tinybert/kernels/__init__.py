"""Numba kernels. They know arrays and math only: nothing here imports the rest of tinybert.

Every kernel trusts its caller on shapes and index ranges (Numba does no bounds checks); the
callers in tinybert/layers/ and tinybert/api.py validate before calling.
"""
