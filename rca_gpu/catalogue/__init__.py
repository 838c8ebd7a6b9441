"""What outlives one run: the causes of a finished run folder, named and edited by the engineer, their
stability, the assignment of new failures to them (or to ``unknown``), the comparison of two runs, and the
selection of retraining images.

Modules follow the concerns: :mod:`~rca_gpu.catalogue.stability` (clusterboot), :mod:`~.reference` (the
reference set a run keeps), :mod:`~.causes` (causes.toml edits), :mod:`~.assign`, :mod:`~.compare`,
:mod:`~.retraining`, and :mod:`~.run_hook` (what a run writes for them). Everything reads a run through
:func:`rca_gpu.runfolder.open_run`; heavy libraries are imported inside the functions.

Public entry point for other readers of a run (the report)::

    from rca_gpu.catalogue import load_catalogue
    catalogue = load_catalogue(run_folder)      # names, edits, members
    catalogue.table()                          # one row per cause: cause, name, size, status, stability ...
    catalogue.cause_of(ids)                    # cause id per image id (-1: none)
"""

from __future__ import annotations

from rca_gpu.catalogue.causes import Catalogue, Cause, load_catalogue
from rca_gpu.catalogue.reference import CatalogueError

__all__ = ["Catalogue", "CatalogueError", "Cause", "load_catalogue"]
