"""Plug-ins: a team's own extractors, reducers and clusterers, added without a fork (docs/plugins.md).

Two ways, both decided by the person who runs rca-gpu, never by a data file:

- an installed package declares entry points, found the first time the algorithms are listed::

      [project.entry-points."rca_gpu.clusterers"]      # also "rca_gpu.reducers"
      kcenters = "my_team.clusterers:CARD"              # a ClusterCard (ReducerCard) instance
      [project.entry-points."rca_gpu.extractors"]
      histogram = "my_team.extractors:HISTOGRAM"       # an rca_gpu.spec.ExtractorInfo

- ``rca-gpu --plugin my_team.clusterers COMMAND ...`` (or :func:`load_plugin` from Python) imports a module
  and registers every card defined at its top level and every extractor of its ``EXTRACTORS`` dict
  (name -> ExtractorInfo).

A run folder records the names of its algorithms (run.json's spec); reading or re-running it imports nothing
because of them: the plug-in must be installed, or named with --plugin, again.
"""

from __future__ import annotations

import importlib
import re

from rca_gpu.engine import registry
from rca_gpu.engine.cards import Card
from rca_gpu.errors import SpecError
from rca_gpu.spec.params import ExtractorInfo, register_extractor

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_plugin(module_name: str) -> list[str]:
    """Import ``module_name`` and register its algorithms; returns what it registered ("clusterer kcenters").

    Registered: every ReducerCard / ClusterCard instance at the module's top level, and every entry of a
    top-level ``EXTRACTORS`` dict (name -> ExtractorInfo). Loading a module twice registers nothing new.

    Raises
    ------
    SpecError
        The name is not a dotted module name, the module does not import (with the error), it defines no card
        and no extractor, or a name clashes with a registered algorithm.
    """
    if not isinstance(module_name, str) or not _MODULE.fullmatch(module_name.strip()):
        raise SpecError(f"The --plugin option takes a module name such as my_team.clusterers. Got {module_name!r} "
                        "instead.")
    try:
        module = importlib.import_module(module_name.strip())
    except Exception as exc:  # noqa: BLE001 - whatever the plug-in raises, the user gets one line
        raise SpecError(f"The --plugin module {module_name!r} cannot be imported: {type(exc).__name__}: {exc}. "
                        "Install the package that provides it, or put its folder on PYTHONPATH.") from None
    done = []
    for value in vars(module).values():
        if isinstance(value, Card):
            registry.register(value)
            done.append(f"{'reducer' if value.stage == 'reduce' else 'clusterer'} {value.name}")
    extractors = getattr(module, "EXTRACTORS", None) or {}
    if not isinstance(extractors, dict) or not all(isinstance(v, ExtractorInfo) for v in extractors.values()):
        raise SpecError(f"The EXTRACTORS of plug-in {module_name!r} must be a dict of name -> ExtractorInfo.")
    for name, info in extractors.items():
        register_extractor(name, info)
        done.append(f"extractor {name}")
    if not done:
        raise SpecError(f"The --plugin module {module_name!r} defines no card (ReducerCard / ClusterCard instance) "
                        "and no EXTRACTORS dict: nothing to register. See docs/plugins.md.")
    return done
