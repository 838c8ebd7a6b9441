"""Compare the causes of two runs: which causes of run A persist in run B, shrank, vanished, and which causes
of B are new (e.g. the DNN under test before and after retraining, or two pipelines on one set).

Every usable image of B (clustered or noise) is given a cause of A's catalogue:

- images that A also holds (same resolved file path) take their cause in A (none when A called them noise);
- the other images are assigned to A's causes by :mod:`rca_gpu.catalogue.assign` (A's extractor and
  reference set), ``unknown`` counting as none.

``--by images`` uses shared images only (B's other images count as none), ``--by assign`` assigns every
image of B, ``--by auto`` (default) uses shared images where there are some and assigns the rest.

Then, for each active cause ``a`` of A with ``size_a`` images in A and ``size_b`` images of B given cause
``a``, the ``ratio`` compares them on a ``basis``:

- ``counts`` (``--basis auto`` when both runs hold the same number of usable images, or ``--basis counts``):
  ratio = size_b / size_a;
- ``shares`` (``--basis auto`` when the runs hold different numbers of images, or ``--basis shares``): each
  size as a share of its own run's usable images, ``share_a = size_a / images_a`` and
  ``share_b = size_b / images_b``; ratio = share_b / share_a. A run of 300 images then holds a cause as much
  as a run of 1500 when the cause has the same share of each.

(With equal image counts the two bases give the same ratio.) ``vanished`` when ratio < VANISHED_BELOW,
``shrank`` when ratio < SHRANK_BELOW, ``grew`` when ratio > GREW_ABOVE, else ``persists``: the tolerance
is a factor of 2 either way, so sampling noise in a cause of a few dozen images does not flip its status.
Its match in B is the B cause holding most of those images. A cause of B is ``new`` when
more than NEW_ABOVE of its images have no cause in A (images in a cause dropped from A's catalogue count as
known, not as new). Dropped causes get no row of their own.
The table is written into B's run folder as comparison.parquet (with B's run id; A's run id in the
``run_a`` column) and summarised in comparison.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.reference import CatalogueError
from rca_gpu.outputs import writes_to
from rca_gpu.runfiles import COMPARISON_FILE, COMPARISON_INFO_FILE

VANISHED_BELOW = 0.1
SHRANK_BELOW = 0.5
GREW_ABOVE = 2.0
NEW_ABOVE = 0.5
STATUSES = ("persists", "grew", "shrank", "vanished", "new")
BASES = ("auto", "counts", "shares")
MODES = ("auto", "images", "assign")
#: Parquet schema metadata key of comparison.parquet: the state of both catalogues it was made with (JSON).
STATES_KEY = b"rca_gpu.catalogue_states"


@dataclass
class Comparison:
    """``table``: one row per active cause of A plus one per new cause of B (see the module docstring);
    ``info``: mode, counts and run ids."""

    table: pd.DataFrame
    info: dict[str, Any]


#: cause value of an image in a dropped cause (none is -1)
DROPPED = -2


def _usable(catalogue) -> pd.DataFrame:
    """id, path, cause of the run's clustered-or-noise rows (-1 none, DROPPED for dropped causes)."""
    clusters = catalogue.run.clusters()
    status = clusters["status"].to_numpy()
    cause = catalogue.members["cause"].to_numpy(np.int64).copy()
    dropped = [c for c, item in catalogue.causes.items() if item.dropped]
    cause[np.isin(cause, dropped)] = DROPPED
    frame = pd.DataFrame({"id": clusters["id"].to_numpy(), "path": clusters["path"].astype(str).to_numpy(),
                          "cause": cause})
    return frame[status != "rejected"].reset_index(drop=True)


def _in_memory(frame: pd.DataFrame) -> bool:
    return bool(len(frame)) and bool(frame["path"].str.startswith("array://").all())


def b_in_a(cat_a, cat_b, *, by: str = "auto", device: str = "auto", batch_size: int | None = None,
           workers: int | None = None, reporter=None) -> tuple[pd.DataFrame, dict[str, int]]:
    """B's usable images with ``cause_b`` and ``cause_a`` (-1 = none, DROPPED = a dropped cause) and ``how``
    (shared | assigned | not_shared); plus counts. Raises CatalogueError for ``by='images'`` without shared
    images and for runs of in-memory images that would need assignment."""
    if by not in MODES:
        raise CatalogueError(f"The --by option must be one of {', '.join(MODES)}. Got {by!r} instead.")
    a, b = _usable(cat_a), _usable(cat_b)
    if _in_memory(a) or _in_memory(b):
        # in-memory images have no file to match or encode
        by_path = {}
    else:
        by_path = dict(zip(a["path"], a["cause"], strict=True))
    shared = b["path"].map(lambda p: p in by_path).to_numpy(bool)
    if by == "images" and not shared.any():
        raise CatalogueError(
            f"Runs {cat_a.run_id} and {cat_b.run_id} share no image (no file path in common), so --by images "
            "cannot match their clusters. Use --by assign (or auto) to assign B's images to A's causes."
        )
    cause_a = np.full(len(b), -1, dtype=np.int64)
    cause_a[shared] = [by_path[p] for p in b.loc[shared, "path"]]
    how = np.where(shared, "shared", "not_shared").astype(object)
    to_assign = np.zeros(len(b), bool) if by == "images" else (~shared if by == "auto" else np.ones(len(b), bool))
    if to_assign.any():
        if _in_memory(b):
            raise CatalogueError(
                f"Run {cat_b.run_id} clustered in-memory images (no files), so they cannot be assigned to the "
                f"causes of run {cat_a.run_id}. Compare runs made from image folders or manifests."
            )
        from rca_gpu.catalogue.assign import check_encodable

        check_encodable(cat_a.run, command="compare")  # before any image is read
        assigned, unreadable = _assign_paths(cat_a, cat_b, b[to_assign], device=device, batch_size=batch_size,
                                             workers=workers, reporter=reporter)
        cause_a[to_assign] = assigned
        how[to_assign] = np.where(unreadable, "unreadable", "assigned")
    frame = b.rename(columns={"cause": "cause_b"}).assign(cause_a=cause_a, how=how)
    counts = {"b_images": len(b), "shared": int(shared.sum()), "assigned": int((how == "assigned").sum()),
              "unreadable": int((how == "unreadable").sum()), "ignored": int(((~shared) & (~to_assign)).sum())}
    return frame, counts


def _assign_paths(cat_a, cat_b, rows: pd.DataFrame, **options) -> tuple[np.ndarray, np.ndarray]:
    """(cause in A, unreadable) per row of B to assign. Rows whose file cannot be read now (moved, changed
    since run B) count as none and are flagged; when none can be read, CatalogueError says so (their causes
    would all look new and A's vanished)."""
    from rca_gpu.catalogue.assign import assign_failures, reason_summary
    from rca_gpu.catalogue.reference import read_reference
    from rca_gpu.data.sources import FailureSet

    table = pd.DataFrame({"id": rows["id"].to_numpy(), "path": rows["path"].to_numpy()})
    files = cat_b.run.image_files(table["path"])  # run B's path rule, applied again: never a path it refused
    rejected = {}
    for i in range(len(files)):
        if not files[i]:
            why = files.reason(i)
            rejected[i] = "file not found (it moved since run B)" if why == "file not found" else why
    failures = FailureSet(table=table, source=str(cat_b.run.path), kind="manifest", rejected=rejected)
    result = assign_failures(cat_a, read_reference(cat_a.run), failures, command="compare", **options)
    if len(result) and (result["status"] == "rejected").all():
        raise CatalogueError(
            f"None of the {len(result)} images of run B ({str(cat_b.run.path)!r}) that must be assigned to the "
            f"causes of run A can be read now ({reason_summary(result)}), so the runs cannot be compared by "
            "assignment. Restore run B's images where run B read them, or use --by images when the runs share "
            "images."
        )
    status = result["status"].to_numpy()
    causes = np.select([status == "assigned", status == "not_a_cause"], [result["cause"].to_numpy(), DROPPED],
                       -1).astype(np.int64)
    return causes, status == "rejected"


def spread_of(causes: pd.Series, none: str = "noise") -> str:
    """How a row's images of B are spread over the causes of one run, most images first, e.g. ``"3 (25),
    noise (4), dropped (1)"``: ``none`` names -1 (no cause), ``dropped`` a cause dropped from that run's
    catalogue. The counts add up to the row's ``size_b``."""
    labels = causes.map(lambda c: none if c == -1 else "dropped" if c == DROPPED else str(int(c)))
    counts = sorted(labels.value_counts().items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{label} ({int(n)})" for label, n in counts)


def status_of(ratio: float) -> str:
    """persists | grew | shrank | vanished for a ratio of B to A (see the module docstring)."""
    if ratio < VANISHED_BELOW:
        return "vanished"
    if ratio < SHRANK_BELOW:
        return "shrank"
    return "grew" if ratio > GREW_ABOVE else "persists"


def compare(cat_a, cat_b, *, by: str = "auto", basis: str = "auto", device: str = "auto",
            batch_size: int | None = None, workers: int | None = None, reporter=None) -> Comparison:
    """Compare the (edited) catalogues of two runs. See the module docstring for the rules.

    Raises
    ------
    CatalogueError
        A bad ``by`` or ``basis``, ``by='images'`` without shared images, or B's images that cannot be
        assigned to A's causes.
    """
    if basis not in BASES:
        raise CatalogueError(f"The --basis option must be one of {', '.join(BASES)}. Got {basis!r} instead.")
    started = time.perf_counter()
    frame, counts = b_in_a(cat_a, cat_b, by=by, device=device, batch_size=batch_size, workers=workers,
                           reporter=reporter)
    sizes_a = cat_a.sizes()
    sizes_b = cat_b.sizes()
    images_a, images_b = len(_usable(cat_a)), counts["b_images"]
    if basis == "auto":
        basis = "counts" if images_a == images_b else "shares"
    rows = []
    for cause in cat_a.active:
        size_a = sizes_a.get(cause, 0)
        mine = frame[frame["cause_a"] == cause]
        size_b = len(mine)
        share_a = size_a / images_a if images_a else float("nan")
        share_b = size_b / images_b if images_b else 0.0
        if basis == "counts":
            ratio = size_b / size_a if size_a else float("nan")
        else:
            ratio = share_b / share_a if share_a else float("nan")
        in_b = mine.loc[mine["cause_b"] >= 0, "cause_b"].value_counts()
        main = int(in_b.index[0]) if len(in_b) else -1
        rows.append({
            "status": status_of(ratio), "cause_a": cause, "name_a": cat_a.name(cause), "size_a": size_a,
            "size_b": size_b, "share_a": share_a, "share_b": share_b, "ratio": ratio, "cause_b": main,
            "name_b": cat_b.name(main) if main >= 0 else "",
            "b_causes": spread_of(mine["cause_b"]), "a_causes": spread_of(mine["cause_a"], "none"),
        })
    for cause in cat_b.active:
        mine = frame[frame["cause_b"] == cause]
        none_share = float((mine["cause_a"] == -1).mean()) if len(mine) else 1.0
        if none_share <= NEW_ABOVE:
            continue
        size_b = sizes_b.get(cause, 0)
        rows.append({
            "status": "new", "cause_a": -1, "name_a": "", "size_a": 0, "size_b": size_b, "share_a": 0.0,
            "share_b": size_b / images_b if images_b else 0.0, "ratio": float("nan"), "cause_b": cause,
            "name_b": cat_b.name(cause), "b_causes": spread_of(mine["cause_b"]),
            "a_causes": spread_of(mine["cause_a"], "none"),
        })
    table = pd.DataFrame(rows, columns=["status", "cause_a", "name_a", "size_a", "size_b", "share_a", "share_b",
                                        "ratio", "cause_b", "name_b", "b_causes", "a_causes"])
    table.insert(0, "run_a", cat_a.run_id)
    mode = by if by != "auto" else ("images" if counts["assigned"] == 0 else
                                    "assign" if counts["shared"] == 0 else "images+assign")
    info = {
        "run_a": cat_a.run_id, "run_b": cat_b.run_id, "run_a_folder": str(cat_a.run.path),
        "mode": mode, "images": counts, "images_a": images_a, "images_b": images_b, "basis": basis,
        "statuses": {s: int((table["status"] == s).sum()) for s in STATUSES},
        "rules": {"vanished_below": VANISHED_BELOW, "shrank_below": SHRANK_BELOW, "grew_above": GREW_ABOVE,
                  "new_above": NEW_ABOVE},
        "catalogues": {"a": cat_a.state(), "b": cat_b.state()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Comparison(table, info)


@writes_to("run_b", "rca-gpu compare", create=False)
def compare_runs(run_a, run_b, *, write: bool = True, **options) -> Comparison:
    """``rca-gpu compare``: compare two run folders; write comparison.parquet / .json into B's folder
    (checked to be writable before any image is read)."""
    import json

    from rca_gpu import outputs
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.folders import check_run_dir
    from rca_gpu.runfolder import check_out_folder

    check_run_dir(run_a, argument="RUN_A")
    check_run_dir(run_b, argument="RUN_B")
    cat_a, cat_b = load_catalogue(run_a), load_catalogue(run_b)
    if write:
        check_out_folder(cat_b.run.path, option="RUN_B", internal=True)  # a run of a study too
    result = compare(cat_a, cat_b, **options)
    if write:
        states = json.dumps(result.info["catalogues"], sort_keys=True).encode()
        with outputs.together():  # comparison.json never describes another comparison.parquet
            outputs.write_parquet(cat_b.run.file(COMPARISON_FILE), result.table, run_id=cat_b.run_id,
                                  metadata={STATES_KEY: states})
            outputs.write_json(cat_b.run.file(COMPARISON_INFO_FILE), result.info, run_id=cat_b.run_id)
    return result


def stale_note(run_b) -> str | None:
    """Why the comparison stored in run B's folder no longer matches the catalogues, or None when it does.

    comparison.json records the state of both catalogues the comparison was made with
    (:meth:`rca_gpu.catalogue.causes.Catalogue.state`); an edit of either catalogue since (``rca-gpu causes``
    or a hand edit of causes.toml) makes the stored names, causes and statuses out of date. Nothing is
    recomputed: images of B may have to be assigned again, so the fix is to run compare again. One line of
    plain text naming the run(s) edited since and the command, e.g. "Made before later edits of the catalogue
    of run B (this run); run `rca-gpu compare A B` again."; a run A that cannot be read now is said so.
    ``run_b``: the opened run folder (RunFolder) holding comparison.json.
    """
    import shlex

    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.errors import RcaError

    info = run_b.json(COMPARISON_INFO_FILE) if run_b.has(COMPARISON_INFO_FILE) else {}
    folder_a = str(info.get("run_a_folder") or "RUN_A")
    command = f"`rca-gpu compare {shlex.quote(folder_a)} {shlex.quote(str(run_b.path))}`"
    recorded = info.get("catalogues")
    if not isinstance(recorded, dict):
        return (f"This comparison does not record the catalogues it was made with, so edits made since cannot be "
                f"detected; run {command} again to be sure it is current.")
    edited = []
    try:
        if load_catalogue(folder_a).state().get("digest") != (recorded.get("a") or {}).get("digest"):
            edited.append(f"run A ({info.get('run_a', '')[:8]})")
    except RcaError:
        return (f"Run A's folder {folder_a!r} cannot be read now, so whether its catalogue changed since this "
                f"comparison cannot be checked; run {command} again with run A's folder.")
    if load_catalogue(run_b).state().get("digest") != (recorded.get("b") or {}).get("digest"):
        edited.append("run B (this run)")
    if not edited:
        return None
    return (f"Made before later edits of the catalogue of {' and of '.join(edited)}: the causes, names and "
            f"statuses below may no longer exist or match; run {command} again.")
