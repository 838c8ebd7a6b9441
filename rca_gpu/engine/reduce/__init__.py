"""Reducers: one module per algorithm."""
