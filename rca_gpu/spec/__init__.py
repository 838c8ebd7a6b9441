"""Pipeline specifications: parse, validate, and serialise (see rca_gpu.spec.config)."""

from rca_gpu.spec.config import *  # noqa: F401,F403
from rca_gpu.spec.config import _show  # noqa: F401
