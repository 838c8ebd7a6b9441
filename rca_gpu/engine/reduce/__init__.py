"""Reducers: one module per algorithm (its card, its CPU implementation and GPU twin)."""
