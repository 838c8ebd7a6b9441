"""The engine: everything that runs on arrays, one home per algorithm."""
