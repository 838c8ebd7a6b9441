"""Image sources and streaming decoding."""

from rca_gpu.data.sources import FailureSet, from_arrays, load_source

__all__ = ["FailureSet", "from_arrays", "load_source"]
