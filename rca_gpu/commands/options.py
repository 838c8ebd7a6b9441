"""Options that every command spells and means the same way."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

#: ``-q/--quiet``: no progress bars, tables or info lines; the result lines (where the outputs went, notes),
#: warnings and errors are still printed, and every file is still written (rca_gpu.progress.reporter_for).
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or info lines: only the "
                                        "result lines (where the outputs went, notes), warnings and errors.")]


def build_spec(pipeline: str | None, config: Path | None, **options: Any):
    """RunSpec from an optional TOML file plus command-line overrides (None = not given; choices as Enums)."""
    from rca_gpu.api import run_spec

    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items()}
    return run_spec(pipeline, config, **values)
