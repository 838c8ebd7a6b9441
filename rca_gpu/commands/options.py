"""Options that every command spells and means the same way."""

from __future__ import annotations

from typing import Annotated

import typer

#: ``-q/--quiet``: no progress bars, tables or info lines; the result lines (where the outputs went, notes),
#: warnings and errors are still printed, and every file is still written (rca_gpu.progress.reporter_for).
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or info lines: only the "
                                        "result lines (where the outputs went, notes), warnings and errors.")]
