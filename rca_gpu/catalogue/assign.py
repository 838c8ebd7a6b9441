"""Assign new images to the known causes of a run, or to ``unknown`` (an open set).

A new image is encoded with the run's own extractor (same weights, layer and preprocessing, as recorded in
run.json) and compared, in that feature space, with the run's reference set (:mod:`rca_gpu.catalogue.reference`):

1. vote: its K_VOTE nearest reference images vote for their causes; the cause with most votes wins (ties:
   the cause with the nearer reference image);
2. distance: its distance to the nearest reference image of the winning cause;
3. open set: the image is ``unknown`` when that distance exceeds the catalogue's radius, the (1 - ALPHA)
   quantile of the same distance measured held-out on the reference images (leave one out; split-conformal
   calibration of HUDD's radius, one for the whole catalogue: see the reference module for why); it is
   ``not_a_cause`` when the winner was dropped from the catalogue.

``confidence`` = vote share x typicality, where typicality is the conformal p-value of the image's distance
among the held-out distances, (1 + #{held-out >= distance}) / (n + 1): 1 close to the reference images, about
ALPHA at the radius.

The catalogue's edits apply: reference images take the cause of their image in the edited catalogue (votes
for merged, split or dropped causes follow); the radius does not depend on the causes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.reference import ALPHA, K_VOTE, CatalogueError, calibrate, radius
from rca_gpu.errors import TooFewImagesError
from rca_gpu.outputs import writes_to
from rca_gpu.runfiles import ASSIGN_INFO_FILE, ASSIGNMENTS_FILE

#: Parquet schema metadata key naming the run whose catalogue the images were assigned to.
CATALOGUE_RUN_KEY = b"rca_gpu.catalogue_run_id"
#: Extractor settings that must match between the run and the new images (keys of run.json "features").
_EXTRACTOR_KEYS = ("name", "layer", "weights", "image_size", "l2_normalized", "dims", "pool", "rule")
STATUSES = ("assigned", "unknown", "not_a_cause", "rejected")


@dataclass
class Assigner:
    """Nearest-reference assignment with a calibrated open-set radius.

    Attributes
    ----------
    features: (N, d) float32 reference features.
    causes: (N,) int64 cause of each reference image (every value is a catalogue cause).
    scores: (N,) float64 held-out distance of each reference image to its nearest other one, NaN where
        it has none (see reference.calibrate).
    dropped: causes marked as not a cause.
    alpha: share of the held-out reference images allowed beyond the radius.
    """

    features: np.ndarray
    causes: np.ndarray
    scores: np.ndarray
    dropped: set[int] = field(default_factory=set)
    alpha: float = ALPHA
    k_vote: int = K_VOTE

    @classmethod
    def from_catalogue(cls, catalogue, reference, *, alpha: float = ALPHA) -> Assigner:
        """Reference images of the (edited) catalogue, the radius calibrated on them.

        Raises
        ------
        CatalogueError
            No reference image belongs to a cause (a run without clusters).
        """
        causes = catalogue.cause_of(reference.ids)
        keep = causes >= 0
        if not keep.any():
            raise CatalogueError(
                f"The run {catalogue.run_id} has no cause to assign images to (it found no cluster). "
                "Run `rca-gpu run` with more failing images or another pipeline."
            )
        features = reference.features[keep]
        dropped = {c for c, cause in catalogue.causes.items() if cause.dropped}
        return cls(features, causes[keep], calibrate(features, causes[keep]), dropped, alpha)

    @property
    def cause_ids(self) -> np.ndarray:
        return np.unique(self.causes)

    @property
    def radius(self) -> float:
        """Open-set radius in feature units: the split-conformal (1 - alpha) quantile of ``scores``."""
        return radius(self.scores, self.alpha)

    def assign(self, x, *, torch_device: str = "cpu", block: int = 4096) -> pd.DataFrame:
        """Assign the rows of ``x`` ((n, d) features, torch tensor or array, same extractor as the run).

        Returns
        -------
        DataFrame with n rows: ``status`` (assigned | unknown | not_a_cause), ``cause`` (int64, -1 unless
        assigned or not_a_cause), ``nearest_cause`` (the vote winner, also for unknown rows), ``distance``
        (float64, feature units, to the nearest reference image of nearest_cause), ``radius`` (the
        catalogue's), ``votes`` (share of the K_VOTE nearest reference images in nearest_cause),
        ``typicality`` and ``confidence`` in [0, 1].
        """
        import torch

        from rca_gpu.engine.device import as_numpy, as_torch

        points = as_torch(x, torch_device).float()
        reference = as_torch(self.features, torch_device).float()
        cause_ids = self.cause_ids
        code_t = as_torch(np.searchsorted(cause_ids, self.causes), torch_device).long()
        k_vote = min(self.k_vote, len(self.causes))
        n = int(points.shape[0])
        winner = np.zeros(n, dtype=np.int64)
        votes = np.zeros(n)
        distance = np.zeros(n)
        for start in range(0, n, block):
            d = torch.cdist(points[start:start + block], reference)
            _, nearest = torch.topk(d, k_vote, dim=1, largest=False)
            voters = code_t[nearest]
            counts = torch.zeros((d.shape[0], len(cause_ids)), device=d.device)
            counts.scatter_add_(1, voters, torch.ones_like(voters, dtype=counts.dtype))
            # distance to the nearest reference image of each cause
            to_cause = torch.full_like(counts, float("inf")).scatter_reduce(
                1, code_t.expand(d.shape[0], -1), d, reduce="amin")
            # most votes wins; among equal votes, the cause with the nearer reference image
            top = counts.max(dim=1, keepdim=True).values
            best = torch.where(counts == top, to_cause, torch.full_like(to_cause, float("inf"))).argmin(dim=1)
            rows = torch.arange(d.shape[0], device=d.device)
            winner[start:start + block] = as_numpy(best)
            votes[start:start + block] = as_numpy(counts[rows, best] / k_vote)
            distance[start:start + block] = as_numpy(to_cause[rows, best]).astype(np.float64)
        nearest_cause = cause_ids[winner]
        # float32 distances by matrix products are off by up to about 3e-4 x |x| near zero: an image equal
        # to a reference image of a catalogue of duplicates (radius 0) must still fall within it
        slack = 1e-3 * float(np.median(np.linalg.norm(self.features, axis=1))) if len(self.features) else 0.0
        distance = np.where(distance < slack, 0.0, distance)
        held_out = np.sort(self.scores[np.isfinite(self.scores)])
        if len(held_out):
            # (1 + #{held-out >= distance}) / (n + 1)
            typicality = (1 + len(held_out) - np.searchsorted(held_out, distance, side="left")) / (len(held_out) + 1)
        else:  # no held-out score (every cause of one image): typical only at a reference image
            typicality = np.where(distance <= 0, 1.0, 0.0)
        status = np.where(distance <= self.radius, "assigned", "unknown").astype(object)
        status[np.isin(nearest_cause, list(self.dropped)) & (status == "assigned")] = "not_a_cause"
        cause = np.where(status == "unknown", -1, nearest_cause).astype(np.int64)
        return pd.DataFrame({
            "status": status, "cause": cause, "nearest_cause": nearest_cause.astype(np.int64),
            "distance": distance, "radius": np.full(n, self.radius), "votes": votes,
            "typicality": typicality, "confidence": votes * typicality,
        })


# --------------------------------------------------------------------------------------------------
# The run's extractor, applied to new images
# --------------------------------------------------------------------------------------------------


def run_spec_of(run, *, device: str | None = None, batch_size: int | None = None, workers: int | None = None,
                image_root: str | None = None, model: str | None = None, command: str = "assign"):
    """The RunSpec that re-creates the run's extractor (resolved layer), with execution options replaced.

    Everything comes from run.json's recorded spec and resolved pipeline, read through its schema, except the
    DNN under test: run.json's ``spec.model`` is a record, never loaded. When the extractor needs the DUT it
    comes from :meth:`rca_gpu.runfolder.RunFolder.dut_ref`: the copy the run keeps (SHA-256 checked) or a
    known architecture with its copied weights, or ``model`` (the user's --model for this command, checked
    against the run's).

    Raises
    ------
    rca_gpu.runfiles.RunFileError
        run.json lacks the spec or the resolved pipeline, or they are not a valid pipeline of this version.
    rca_gpu.runfolder.RunFolderError
        The DUT: ``model`` is not the run's, the copy is missing or changed, or the run's DUT was code.
    """
    from rca_gpu.errors import SpecError, printable
    from rca_gpu.runfiles import RUN_FILE, RUN_FIX, RunFileError
    from rca_gpu.spec import RUN_OPTIONS, build_run_spec

    recorded = dict(run.need("spec")["spec"])
    pipeline = run.info.get("resolved_pipeline") or recorded.get("pipeline")
    keep = {k: v for k, v in recorded.items()
            if k in RUN_OPTIONS and v is not None and k not in ("pipeline", "image_root", "model")}
    overrides = {"device": device, "batch_size": batch_size, "workers": workers, "image_root": image_root,
                 "cache_features": False}
    try:
        spec = build_run_spec(keep, pipeline=pipeline, **overrides)
    except SpecError as exc:
        raise RunFileError(f"{RUN_FILE} in {str(run.path)!r} records a spec this version cannot use "
                           f"(resolved_pipeline {printable(repr(pipeline))[:120]}): {exc} {RUN_FIX}") from None
    dut = run.dut_ref(model, command=command) if spec.pipeline.features.info.needs_dut else model
    return spec.replace(model=dut) if dut else spec


def check_extractor(run, info: dict[str, Any]) -> None:
    """Refuse features made by another extractor setting than the run's (names the first difference)."""
    recorded = run.info.get("features") or {}
    for key in _EXTRACTOR_KEYS:
        if key in recorded and key in info and recorded[key] != info[key]:
            raise CatalogueError(
                f"The new images were encoded with {key}={info[key]!r} but the run {run.run_id} used "
                f"{key}={recorded[key]!r}; assignment needs the run's extractor. Check --model, or run the "
                "catalogue commands with the rca-gpu version and files that made the run."
            )


def check_encodable(run, *, command: str = "assign") -> None:
    """Refuse, before any image is read, a run whose extractor cannot encode other images: features brought
    with ``rca-gpu run --features`` (no extractor at all) and the 'ae' autoencoder (trained on the run's own
    images). ``command`` names the command in the message (assign, select, compare).

    Raises
    ------
    CatalogueError
        One line naming the run, why its features cannot be made for new images, and what works instead.
    """
    name = (run.info.get("features") or {}).get("name")
    if name is None:
        spec = (run.info.get("resolved_pipeline") or (run.info.get("spec") or {}).get("pipeline") or "")
        name = str(spec).split("+", 1)[0].split("(", 1)[0]
    if name == "precomputed":
        raise CatalogueError(
            f"The run {run.run_id} ({str(run.path)!r}) clustered features passed with --features, so rca-gpu has "
            f"no extractor to encode new images the same way and `rca-gpu {command}` cannot place them. "
            f"{command.capitalize()} needs a run whose features came from an extractor: run again on the images "
            "themselves (a folder or manifest), e.g. rca-gpu run IMAGES --pipeline mobilenet_v2+umap+dbscan "
            f"--out DIR, then pass DIR as {'RUN_A' if command == 'compare' else 'RUN_DIR'}."
        )
    if name == "ae":
        raise CatalogueError(
            f"The run {run.run_id} ({str(run.path)!r}) used the 'ae' extractor, an autoencoder trained on the "
            f"run's own images; it cannot encode other images the same way, so `rca-gpu {command}` cannot place "
            "them. Use a run made with another extractor, e.g. rca-gpu run IMAGES --pipeline "
            "mobilenet_v2+umap+dbscan --out DIR."
        )


def encode(run, failures, *, device: str = "auto", batch_size: int | None = None, workers: int | None = None,
           model: str | None = None, reporter=None, command: str = "assign"):
    """Features of ``failures`` by the run's extractor: (Features, Device). Raises CatalogueError for runs
    whose extractor cannot be re-created for other images (see :func:`check_encodable`)."""
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.features.compute import compute_features

    check_encodable(run, command=command)
    spec = run_spec_of(run, device=device, batch_size=batch_size, workers=workers, model=model, command=command)
    resolved = resolve_device(spec.device)
    features = compute_features(spec.pipeline.features, failures, spec, resolved, None, reporter)
    if len(features.positions):  # nothing encoded (every image unreadable): no extractor to compare
        check_extractor(run, features.info)
    return features, resolved


def assign_failures(catalogue, reference, failures, *, device: str = "auto", batch_size: int | None = None,
                    workers: int | None = None, model: str | None = None, reporter=None,
                    alpha: float = ALPHA, command: str = "assign") -> pd.DataFrame:
    """One row per row of ``failures``: ``id``, ``path``, the assignment columns (see
    :meth:`Assigner.assign`), ``cause_name``, ``reason`` (why a row was rejected), then the source's metadata.
    """
    assigner = Assigner.from_catalogue(catalogue, reference, alpha=alpha)
    features, resolved = encode(catalogue.run, failures, device=device, batch_size=batch_size, workers=workers,
                                model=model, reporter=reporter, command=command)
    if len(features.positions):
        result = assigner.assign(features.matrix, torch_device=resolved.torch_device)
    else:  # no image could be read: every row is rejected with its reason
        result = pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in _RESULT_COLUMNS.items()})
    return assignment_table(catalogue, failures, features.positions, features.rejected, result)


#: The columns of :meth:`Assigner.assign` and their dtypes.
_RESULT_COLUMNS = {"status": object, "cause": np.int64, "nearest_cause": np.int64, "distance": np.float64,
                   "radius": np.float64, "votes": np.float64, "typicality": np.float64, "confidence": np.float64}


def reason_summary(table: pd.DataFrame, top: int = 3) -> str:
    """"2 x empty file (0 bytes) | 1 x not a readable image": the most common reasons of the rejected rows."""
    from rca_gpu.data.sources import summarize_reasons

    shown, kinds = summarize_reasons((str(r) for r, s in zip(table["reason"], table["status"], strict=True)
                                      if s == "rejected"),
                                     top)
    return shown + (f" | {kinds - top} other kind(s) of reason" if kinds > top else "")


def unreadable_note(table: pd.DataFrame, source: Any, *, what: str = "image") -> str | None:
    """One line when no row of an assignment table could be read (every row ``rejected``), with the most
    common reasons and what to check for them (:func:`rca_gpu.data.sources.rejection_hint`); None otherwise.
    ``what`` names the rows ("image", "pool image")."""
    from rca_gpu.data.sources import rejection_hint

    if not len(table) or not (table["status"] == "rejected").all():
        return None
    hint = rejection_hint(table["reason"])
    return (f"no {what} of {str(source)!r} could be read: all {len(table)} rows are rejected "
            f"({reason_summary(table)}); each row's reason is in assignments.parquet." + (f" {hint}" if hint else ""))


def assignment_table(catalogue, failures, positions: np.ndarray, rejected: dict[int, str],
                     result: pd.DataFrame) -> pd.DataFrame:
    """Spread per-image results over every input row; rejected rows get their reason."""
    n = len(failures)
    out = pd.DataFrame({
        "status": np.full(n, "rejected", dtype=object), "cause": np.full(n, -1, dtype=np.int64),
        "nearest_cause": np.full(n, -1, dtype=np.int64), "distance": np.full(n, np.nan),
        "radius": np.full(n, np.nan), "votes": np.full(n, np.nan), "typicality": np.full(n, np.nan),
        "confidence": np.full(n, 0.0),
    })
    for column in out.columns:
        values = out[column].to_numpy().copy()
        values[positions] = result[column].to_numpy()
        out[column] = values
    reason = np.full(n, "", dtype=object)
    for position, why in rejected.items():
        reason[position] = why
    names = [catalogue.name(int(c)) if s in ("assigned", "not_a_cause") else ("unknown" if s == "unknown" else "")
             for c, s in zip(out["cause"], out["status"], strict=True)]
    table = failures.table
    front = pd.DataFrame({"id": table["id"].to_numpy(), "path": table["path"].to_numpy()})
    meta = table.drop(columns=[c for c in ("id", "path") if c in table.columns]).reset_index(drop=True)
    meta = meta.rename(columns={c: f"input_{c}" for c in meta.columns if c in out.columns or c in ("cause_name",
                                                                                                   "reason")})
    return pd.concat([front, out, pd.DataFrame({"cause_name": names, "reason": reason}), meta], axis=1)


def assign_source(run_dir, source, out: Path, *, device: str = "auto", batch_size: int | None = None,
                  workers: int | None = None, image_root: str | None = None, model: str | None = None,
                  alpha: float = ALPHA, reporter=None, command: str = "assign",
                  writes: tuple[str, ...] = (ASSIGNMENTS_FILE, ASSIGN_INFO_FILE)) -> tuple[Any, Any, pd.DataFrame, Any]:
    """The edited catalogue of ``run_dir``, its reference set, the assignment table of every row of
    ``source``, and the source as read (a :class:`rca_gpu.data.sources.FailureSet`, whose ``describe()`` the
    output JSON records as run.json does, with what a folder scan left out): what ``assign`` and ``select``
    share. Before any image is read: ``run_dir`` must be a run folder (not the output of assign/select/export),
    ``out`` a writable folder that is not a run folder and where none of the files the command ``writes`` is the
    source manifest, and the run's extractor able to encode new images (see :func:`check_encodable`).

    Raises
    ------
    RunFolderError, CatalogueError, SourceError, TooFewImagesError, SpecError
        Bad run folder, missing reference set, unusable ``out``, unusable source, or options.
    """
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.folders import check_out_dir, check_run_dir
    from rca_gpu.catalogue.reference import read_reference
    from rca_gpu.data.sources import load_source
    from rca_gpu.runfolder import check_inputs_kept

    check_run_dir(run_dir)
    catalogue = load_catalogue(run_dir)
    check_out_dir(out, run_path=catalogue.run.path, command=f"rca-gpu {command}",
                  example="selected/" if command == "select" else "assigned/")
    check_inputs_kept(out, {"POOL_SOURCE" if command == "select" else "NEW_SOURCE": source}, files=writes)
    check_encodable(catalogue.run, command=command)
    run_spec_of(catalogue.run, model=model, command=command)  # the run's spec and DUT, before any image is read
    reference = read_reference(catalogue.run)
    failures = load_source(source, image_root=image_root)
    table = assign_failures(catalogue, reference, failures, device=device, batch_size=batch_size, workers=workers,
                            model=model, reporter=reporter, alpha=alpha, command=command)
    return catalogue, reference, table, failures


@writes_to("out", "rca-gpu assign")
def assign_run(run_dir, source, out, *, device: str = "auto", batch_size: int | None = None,
               workers: int | None = None, image_root: str | None = None, model: str | None = None,
               alpha: float = ALPHA, reporter=None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``rca-gpu assign``: assign the images of ``source`` to the causes of the run in ``run_dir``; write
    ``out/assignments.parquet`` and ``out/assign.json``. Returns (table, summary).

    Raises
    ------
    RunFolderError, CatalogueError, SourceError, TooFewImagesError, SpecError
        Bad run folder, missing reference set, unusable source, or options. TooFewImagesError also when no
        image of ``source`` could be read, after both files were written (every row rejected with its reason).
    """
    from rca_gpu import outputs

    started = time.perf_counter()
    check_alpha(alpha)
    out = Path(out)
    catalogue, reference, table, failures = assign_source(run_dir, source, out, device=device, batch_size=batch_size,
                                                          workers=workers, image_root=image_root, model=model,
                                                          alpha=alpha, reporter=reporter)
    counts = {status: int((table["status"] == status).sum()) for status in STATUSES}
    summary = {
        "catalogue_run_id": catalogue.run_id,
        "run_folder": str(catalogue.run.path),
        "source": failures.describe(),
        "rows": len(table),
        "counts": counts,
        "per_cause": per_cause_counts(table, catalogue),
        "method": {"k_vote": K_VOTE, "alpha": alpha,
                   "open_set": "nearest reference image within the catalogue's radius",
                   "radius": round(float(table["radius"].dropna().iloc[0]), 6) if table["radius"].notna().any()
                   else None,
                   "reference_images": int(reference.n)},
        "catalogue_edits": list(catalogue.history),
        "note": unreadable_note(table, source),
        "seconds": round(time.perf_counter() - started, 3),
    }
    with outputs.together():  # assign.json never describes an assignments.parquet that was not written
        outputs.write_parquet(out / ASSIGNMENTS_FILE, table, metadata={CATALOGUE_RUN_KEY: catalogue.run_id.encode()})
        outputs.write_json(out / ASSIGN_INFO_FILE, summary)
    if summary["note"]:  # every row rejected: written with its reason, and an error as a run with no image gives
        raise TooFewImagesError(summary["note"])
    return table, summary


def per_cause_counts(table: pd.DataFrame, catalogue) -> dict[str, dict[str, Any]]:
    """Cause id (as text, ascending) -> ``name``, ``status`` (``cause``, or ``dropped`` for a cause dropped from
    the catalogue, whose images have status not_a_cause in ``table``), ``images`` and ``mean_confidence`` of the
    images of ``table`` placed in it: every cause that got an image, dropped ones included (assign.json's
    ``per_cause``, the rows of the terminal table)."""
    placed = table[table["status"].isin(["assigned", "not_a_cause"])]
    counts: dict[str, dict[str, Any]] = {}
    for cause, group in placed.groupby("cause", sort=True):
        counts[str(int(cause))] = {
            "name": catalogue.name(int(cause)),
            "status": "dropped" if (group["status"] == "not_a_cause").all() else "cause",
            "images": len(group),
            "mean_confidence": round(float(group["confidence"].mean()), 6),
        }
    return counts


def check_alpha(alpha: float) -> None:
    """The --alpha rule: a share in [0, 0.5)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 0.5:
        raise CatalogueError(
            "The --alpha option must be a number in [0, 0.5) (share of the run's reference images beyond the "
            "open-set radius). "
            f"Got {alpha!r} instead."
        )
