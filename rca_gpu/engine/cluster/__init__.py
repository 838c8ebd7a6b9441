"""Clusterers: one module per algorithm."""
