"""Pallas kernels for what XLA leaves on the table (each module says what it replaces and by how much)."""
