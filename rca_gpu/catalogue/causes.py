"""The catalogue of causes of a run: the clusters, as named and edited by the engineer.

A run's clusters become causes with the same ids (cluster 3 is cause 3). Edits never change the run's own
files; they are kept in two files inside the run folder, both carrying the run id:

``causes.toml``
    Small and human-readable: every cause with its id, name, origin ("cluster 3", "merge of 4, 7",
    "split of 5"), the run clusters it draws its images from, whether it was dropped (not a cause), and the
    history of edits. Names may be changed by hand in this file.
``causes.parquet``
    Only when a merge or split moved images between causes: one row per row of clusters.parquet, ``id``
    and ``cause`` (-1 for noise and rejected rows).

Ids are stable: a merge keeps the smallest id of the merged causes and retires the others, a split retires
the split cause and gives its parts new ids above every id used before, so an id never changes meaning.
Every command that reads a run (report, assign, compare, select) goes through :func:`load_catalogue`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.reference import CatalogueError
from rca_gpu.describe import common_values
from rca_gpu.runfiles import CAUSES_FILE, MEMBERS_FILE, SUMMARY_FILE
from rca_gpu.runfolder import CATALOGUE_WAIT

CATALOGUE_FORMAT = 1
#: A split searches the number of parts in 2 .. MAX_SPLIT_PARTS by silhouette unless it is given.
MAX_SPLIT_PARTS = 6
_HEADER = (
    "# Causes of one rca-gpu run: names and edits made with `rca-gpu causes` (names may be edited here).\n"
    "# The run's own outputs are never changed; delete this file and causes.parquet to start over.\n"
)


@dataclass
class Cause:
    """One cause of the catalogue.

    Attributes
    ----------
    id: stable cause id (initially the cluster id).
    name: the engineer's name for it ("" until named).
    origin: where it comes from: "cluster 3", "merge of 4, 7", "split of 5".
    clusters: the run's clusters its images come from.
    dropped: True when the engineer marked it as not a cause.
    """

    id: int
    name: str = ""
    origin: str = ""
    clusters: list[int] = field(default_factory=list)
    dropped: bool = False

    @property
    def label(self) -> str:
        """The name, or "cause <id>" while unnamed."""
        return self.name or f"cause {self.id}"


@dataclass
class Catalogue:
    """The causes of one run and which image belongs to which cause.

    Attributes
    ----------
    run: the opened run folder (:class:`rca_gpu.runfolder.RunFolder`).
    causes: cause id -> Cause, dropped causes included, retired ids not.
    members: one row per row of clusters.parquet: ``id``, ``cluster``, ``status``, ``cause`` (int64, -1 for
        noise and rejected rows).
    history: the edits made, oldest first, one line each.
    next_id: the smallest id no cause has used yet.
    files: the state of causes.toml and causes.parquet when read (their SHA-256, None when absent): a save
        refuses to write over edits another process saved since.
    """

    run: Any
    causes: dict[int, Cause]
    members: pd.DataFrame
    history: list[str] = field(default_factory=list)
    next_id: int = 0
    files: tuple[str | None, str | None] = (None, None)

    # ------------------------------------------------------------------ reading

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def active(self) -> list[int]:
        """Ids of the causes not dropped, ascending."""
        return sorted(c for c, cause in self.causes.items() if not cause.dropped)

    @property
    def edited(self) -> bool:
        """True when any membership differs from the run's clusters."""
        clustered = self.members["cluster"].to_numpy() >= 0
        cause = self.members["cause"].to_numpy()
        return bool(np.any(cause[clustered] != self.members["cluster"].to_numpy()[clustered]))

    def state(self) -> dict[str, Any]:
        """What the catalogue is now, to tell later whether it was edited since: ``run_id``, ``edits`` (the
        length of the edit history) and ``digest`` (SHA-256 of the causes' ids, names, origins, clusters and
        drops and of the history, so hand edits of causes.toml count too)."""
        import hashlib
        import json

        content = {"history": list(self.history),
                   "causes": [[c.id, c.name, c.origin, list(map(int, c.clusters)), bool(c.dropped)]
                              for c in (self.causes[i] for i in sorted(self.causes))]}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return {"run_id": self.run_id, "edits": len(self.history), "digest": digest}

    def name(self, cause: int) -> str:
        """Display name of a cause id ("unknown" for -1)."""
        if cause < 0:
            return "unknown"
        return self.causes[cause].label if cause in self.causes else f"cause {cause}"

    def sizes(self) -> dict[int, int]:
        counts = self.members.loc[self.members["cause"] >= 0, "cause"].value_counts()
        return {int(k): int(v) for k, v in counts.items()}

    def causes_by_cluster(self) -> dict[int, list[tuple[int, int]]]:
        """Cluster of the run -> the causes its images belong to in this catalogue, as (cause, images) pairs,
        most images first (ties by cause id): one pair for an unedited or merged cluster, a split cluster's
        parts otherwise. Noise and images of no cause are left out."""
        placed = self.members[(self.members["cluster"] >= 0) & (self.members["cause"] >= 0)]
        counts = placed.groupby(["cluster", "cause"]).size()
        out: dict[int, list[tuple[int, int]]] = {}
        for (cluster, cause), images in sorted(counts.items(), key=lambda item: (item[0][0], -item[1], item[0][1])):
            out.setdefault(int(cluster), []).append((int(cause), int(images)))
        return out

    def cause_of(self, ids: Iterable[Any]) -> np.ndarray:
        """(n,) int64 cause of each image id (-1 for noise, rejected, or ids the run does not hold)."""
        lookup = pd.Series(self.members["cause"].to_numpy(), index=pd.Index(self.members["id"]))
        found = lookup.reindex(pd.Index(list(ids)))
        return found.fillna(-1).to_numpy(dtype=np.int64)

    def stability(self) -> dict[int, float]:
        """Stability of causes that are one unedited cluster of the run (others: no value)."""
        if not self.run.has(SUMMARY_FILE):
            return {}
        summary = self.run.table(SUMMARY_FILE)
        by_cluster = dict(zip(summary["cluster"].astype(int), summary["stability"].astype(float), strict=True))
        out = {}
        for cause_id, cause in self.causes.items():
            if cause.origin == f"cluster {cause_id}" and cause.clusters == [cause_id]:
                out[cause_id] = by_cluster.get(cause_id, float("nan"))
        return out

    def table(self) -> pd.DataFrame:
        """One row per cause: cause, name, size, status, origin, stability, and the most common values of
        root_cause / label / prediction / folder among its images when the run has those columns."""
        clusters = self.run.clusters()
        merged = clusters.assign(cause=self.members["cause"].to_numpy())
        sizes = self.sizes()
        stability = self.stability()
        rows = []
        for cause_id in sorted(self.causes):
            cause = self.causes[cause_id]
            row = {
                "cause": cause_id, "name": cause.name, "size": sizes.get(cause_id, 0),
                "status": "dropped" if cause.dropped else "cause", "origin": cause.origin,
                "stability": stability.get(cause_id, float("nan")),
            }
            group = merged[merged["cause"] == cause_id]
            row.update(common_values(group))
            rows.append(row)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ edits

    def _get(self, cause: int) -> Cause:
        if cause not in self.causes:
            known = ", ".join(map(str, sorted(self.causes))) or "none"
            raise CatalogueError(
                f"The run {self.run_id} has no cause {cause} (causes: {known}). See `rca-gpu causes "
                f"{self.run.path}`."
            )
        return self.causes[cause]

    def rename(self, cause: int, name: str) -> bool:
        """Give cause ``cause`` the name ``name`` (stripped); an empty name clears it (the cause is shown as
        "cause <id>" again). Returns False, recording nothing, when the cause already has that name (or, for an
        empty one, has none)."""
        target = self._get(cause)
        name = name.strip()
        if target.name == name:
            return False
        target.name = name
        self.history.append(f"name {cause} = {name!r}" if name else f"clear name {cause}")
        return True

    def drop(self, cause: int) -> bool:
        """Mark a cause as not a cause: later commands skip it (assignment reports 'not_a_cause'). Returns
        False, recording nothing, when it is dropped already."""
        target = self._get(cause)
        if target.dropped:
            return False
        target.dropped = True
        self.history.append(f"drop {cause}")
        return True

    def restore(self, cause: int) -> bool:
        """Undo a drop. Returns False, recording nothing, when the cause is not dropped."""
        target = self._get(cause)
        if not target.dropped:
            return False
        target.dropped = False
        self.history.append(f"restore {cause}")
        return True

    def merge(self, causes: list[int]) -> int:
        """Merge causes into the one with the smallest id; return that id.

        The causes must be all active or all dropped (the merged cause keeps that status): a merge never
        decides whether a cause the engineer dropped is a cause.

        Raises
        ------
        CatalogueError
            Fewer than two different causes, an unknown id, or dropped and active causes together.
        """
        ids = sorted(set(causes))
        if len(ids) < 2:
            raise CatalogueError(f"A merge needs at least two different causes. Got {causes!r}; write --merge 4,7.")
        parts = [self._get(c) for c in ids]
        dropped = [p.id for p in parts if p.dropped]
        if dropped and len(dropped) < len(parts):
            active = [p.id for p in parts if not p.dropped]
            listed = ",".join(map(str, ids))
            run = shlex.quote(str(self.run.path))
            restore = " ".join(f"--restore {c}" for c in dropped)
            drop = " ".join(f"--drop {c}" for c in active)
            raise CatalogueError(
                f"The --merge value {listed} mixes dropped causes ({', '.join(map(str, dropped))}) with active ones "
                f"({', '.join(map(str, active))}); merged causes must be all active or all dropped, so that a merge "
                "never decides whether a dropped cause is a cause. "
                f"Restore them first (`rca-gpu causes {run} {restore}`), then merge; or drop the others first "
                f"(`rca-gpu causes {run} {drop}`) to merge dropped causes."
            )
        target = parts[0]
        target.name = next((p.name for p in parts if p.name), "")
        target.clusters = sorted({c for p in parts for c in p.clusters})
        target.origin = "merge of " + ", ".join(str(p.id) for p in parts)
        target.dropped = bool(dropped)
        cause = self.members["cause"].to_numpy().copy()
        cause[np.isin(cause, ids)] = target.id
        self.members["cause"] = cause
        for part in parts[1:]:
            del self.causes[part.id]
        self.history.append(f"merge {','.join(map(str, ids))} -> {target.id}")
        return target.id

    def split(self, cause: int, parts: int | None = None, *, seed: int | None = None) -> list[int]:
        """Re-cluster the images of one cause into ``parts`` causes (chosen by silhouette when None).

        The images are clustered with K-means in the space the run clustered them in (the ``e*`` columns
        of embedding.parquet; the 2-D ``x``/``y`` map when the run did not store that space). Returns the
        new ids; the split cause is retired.
        """
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        target = self._get(cause)
        seed = int(self.run.info.get("seed", 0)) if seed is None else seed
        member_ids = self.members.loc[self.members["cause"] == cause, "id"]
        points = self._space(member_ids)
        n = len(points)
        if parts is not None and (parts < 2 or parts > n):
            raise CatalogueError(
                f"Cause {cause} has {n} images; --split {cause}={parts} needs 2 <= parts <= {n}."
            )
        if n < 4:
            raise CatalogueError(f"Cause {cause} has {n} images: too few to split (at least 4 are needed).")
        if parts is None:
            best = (-2.0, 2)
            for k in range(2, min(MAX_SPLIT_PARTS, n - 1) + 1):
                labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(points)
                if len(np.unique(labels)) > 1:
                    best = max(best, (float(silhouette_score(points, labels)), -k))
            parts = -best[1] if best[0] > -2 else 2
        labels = KMeans(n_clusters=parts, n_init=4, random_state=seed).fit_predict(points)
        # number the parts by size, largest first, from next_id on
        order = np.argsort(-np.bincount(labels, minlength=parts), kind="stable")
        new_ids = [self.next_id + rank for rank in range(parts)]
        remap = {int(old): new_ids[rank] for rank, old in enumerate(order)}
        cause_column = self.members["cause"].to_numpy().copy()
        rows = np.flatnonzero(cause_column == cause)
        cause_column[rows] = [remap[int(v)] for v in labels]
        self.members["cause"] = cause_column
        for new_id in new_ids:
            self.causes[new_id] = Cause(new_id, "", f"split of {cause}", list(target.clusters), target.dropped)
        del self.causes[cause]
        self.next_id += parts
        self.history.append(f"split {cause} -> {', '.join(map(str, new_ids))}")
        return new_ids

    def _space(self, ids: pd.Series) -> np.ndarray:
        embedding = self.run.embedding()
        columns = [c for c in embedding.columns if re.fullmatch(r"e\d+", str(c))] or ["x", "y"]
        frame = embedding.set_index("id")
        return frame.loc[ids.to_numpy(), columns].to_numpy(dtype=np.float64)

    def reset(self) -> None:
        """Forget every edit (the next save removes causes.toml and causes.parquet)."""
        fresh = _from_clusters(self.run)
        self.causes, self.members, self.history, self.next_id = (
            fresh.causes, fresh.members, [], fresh.next_id)

    # ------------------------------------------------------------------ writing

    def save(self) -> list[Path]:
        """Write causes.toml (and causes.parquet when images moved between causes) into the run folder, both
        renamed into place together (:func:`rca_gpu.outputs.together`), under the catalogue's lock.

        Without any edit left (after :meth:`reset`) both files are removed. Returns the files written.

        Raises
        ------
        CatalogueError
            Another process (another ``rca-gpu causes``, or a hand edit) changed the files since this
            catalogue was read: nothing is written, so that neither edit is lost.
        rca_gpu.outputs.FolderBusyError
            Another process holds the catalogue's lock for longer than :data:`LOCK_WAIT` seconds.
        """
        import tomli_w

        from rca_gpu import outputs

        toml_path, parquet_path = self.run.file(CAUSES_FILE), self.run.file(MEMBERS_FILE)
        with catalogue_lock(self.run.path):
            if _files_state(self.run) != self.files:
                raise CatalogueError(
                    f"The catalogue of the run {self.run_id} ({str(self.run.path)!r}) was changed by another "
                    "`rca-gpu causes` (or by hand) after this command read it; these edits were not written, so "
                    "that none is lost. Run the command again: it applies them to the catalogue as it is now."
                )
            if not self.history:
                for path in (toml_path, parquet_path):
                    path.unlink(missing_ok=True)
                self.files = _files_state(self.run)
                return []
            sizes = self.sizes()
            data = {
                "run_id": self.run_id,
                "format": CATALOGUE_FORMAT,
                "next_id": self.next_id,
                "history": list(self.history),
                "cause": [
                    {"id": c.id, "name": c.name, "origin": c.origin, "clusters": list(map(int, c.clusters)),
                     "dropped": c.dropped, "size": sizes.get(c.id, 0)}
                    for c in (self.causes[i] for i in sorted(self.causes))
                ],
            }
            written = []
            with outputs.together():  # the members first: a reader never sees causes it cannot place
                if self.edited:
                    frame = pd.DataFrame({"id": self.members["id"].to_numpy(),
                                          "cause": self.members["cause"].to_numpy(np.int64)})
                    written.append(outputs.write_parquet(parquet_path, frame, run_id=self.run_id))
                written.insert(0, outputs.write_text(toml_path, _HEADER + tomli_w.dumps(data)))
            if not self.edited:
                parquet_path.unlink(missing_ok=True)
            self.files = _files_state(self.run)
            return written


#: Seconds a catalogue read or save waits for another process's read or save (they take milliseconds).
LOCK_WAIT = CATALOGUE_WAIT


def catalogue_lock(run_path: str | Path):
    """The lock on a run's catalogue (causes.toml and causes.parquet) for one read or save: waits up to
    :data:`LOCK_WAIT` seconds, then refuses naming the holder (rca_gpu.outputs.FolderBusyError). A new run
    into the folder holds it while it runs. A read-only run folder is read without one."""
    from rca_gpu.outputs import writing
    from rca_gpu.runfiles import CATALOGUE_LOCK_FILE, CATALOGUE_LOCK_HOLDER_FILE

    return writing(run_path, "rca-gpu causes", lock_file=CATALOGUE_LOCK_FILE,
                   holder_file=CATALOGUE_LOCK_HOLDER_FILE, wait=LOCK_WAIT, what="catalogue of the run folder",
                   create=False)


def _files_state(run) -> tuple[str | None, str | None]:
    """SHA-256 of causes.toml and causes.parquet (None for a missing file)."""
    from rca_gpu.runfiles import sha256_of

    def digest(name: str) -> str | None:
        try:
            return sha256_of(run.file(name))
        except FileNotFoundError:
            return None

    return digest(CAUSES_FILE), digest(MEMBERS_FILE)


def _from_clusters(run) -> Catalogue:
    clusters = run.clusters()
    cluster = clusters["cluster"].to_numpy(np.int64)
    cluster = np.where(clusters["status"].to_numpy() == "clustered", cluster, -1)
    members = pd.DataFrame({"id": clusters["id"].to_numpy(), "cluster": cluster,
                            "status": clusters["status"].to_numpy(), "cause": cluster.copy()})
    ids = sorted(int(c) for c in np.unique(cluster[cluster >= 0]))
    causes = {c: Cause(c, "", f"cluster {c}", [c]) for c in ids}
    return Catalogue(run, causes, members, [], (max(ids) + 1) if ids else 0)


def load_catalogue(run_folder) -> Catalogue:
    """The catalogue of a finished run: its clusters with the engineer's names and edits applied.

    Parameters
    ----------
    run_folder:
        A run folder path, or a :class:`rca_gpu.runfolder.RunFolder` already opened.

    Raises
    ------
    rca_gpu.runfolder.RunFolderError
        Not a finished run of this version, files of another run, or a causes.parquet that breaks its schema.
    CatalogueError
        causes.toml is unreadable, breaks its schema (:class:`rca_gpu.runfiles.CausesFile`: types, ranges,
        sizes, nesting), belongs to another run, or disagrees with causes.parquet.
    rca_gpu.outputs.FolderBusyError
        Another process holds the catalogue's lock longer than :data:`LOCK_WAIT` seconds (e.g. a new run
        into the folder).
    """
    from rca_gpu.runfolder import RunFolder, open_run

    run = run_folder if isinstance(run_folder, RunFolder) else open_run(run_folder)
    catalogue = _from_clusters(run)
    with catalogue_lock(run.path):  # causes.toml and causes.parquet of one save, never half of two
        catalogue.files = _files_state(run)
        if catalogue.files == (None, None):
            return catalogue
        return _apply_edits(run, catalogue)


def _apply_edits(run, catalogue: Catalogue) -> Catalogue:
    """The catalogue with causes.toml (and causes.parquet) applied, read through their schemas."""
    from rca_gpu.runfiles import read_toml

    toml_path = run.file(CAUSES_FILE)
    if not toml_path.is_file():  # causes.toml marks the edits; a causes.parquet alone is a save cut short
        return catalogue
    where = f"{str(toml_path)!r}"
    fix = "Fix it in the file, or delete causes.toml and causes.parquet to start over."
    data = read_toml(toml_path, error=CatalogueError, fix=fix)
    if data.get("run_id") != run.run_id:
        raise CatalogueError(
            f"{where} belongs to run {_plain_value(data.get('run_id'))}, but the folder holds run {run.run_id}. "
            "Delete it (and causes.parquet) to start over."
        )
    if data.get("format") != CATALOGUE_FORMAT:
        raise CatalogueError(
            f"{where} was written by another version of rca-gpu (format {_plain_value(data.get('format'))}, "
            f"this version reads {CATALOGUE_FORMAT}). Delete it and make the edits again."
        )
    _check_fields(where, data, fix)
    run_clusters = {int(c) for c in np.unique(catalogue.members["cluster"]) if c >= 0}
    causes: dict[int, Cause] = {}
    for entry in data.get("cause", []):
        unknown = sorted(set(entry.get("clusters", [])) - run_clusters)
        if unknown:
            raise CatalogueError(
                f"{where}: cause {entry['id']} has clusters = {list(entry.get('clusters', []))}, but the run has no "
                f"cluster {unknown[0]} (its clusters: {', '.join(map(str, sorted(run_clusters))) or 'none'}). "
                "Fix it in the file, or delete causes.toml and causes.parquet to start over."
            )
        cause = Cause(entry["id"], entry.get("name", ""), entry.get("origin", ""), list(entry.get("clusters", [])),
                      entry.get("dropped", False))
        causes[cause.id] = cause
    if run.has(MEMBERS_FILE):
        stored = run.table(MEMBERS_FILE)
        lookup = pd.Series(stored["cause"].to_numpy(np.int64), index=pd.Index(stored["id"]))
        cause_column = lookup.reindex(pd.Index(catalogue.members["id"])).fillna(-1).to_numpy(np.int64)
        catalogue.members["cause"] = cause_column
    used = {int(c) for c in np.unique(catalogue.members["cause"]) if c >= 0}
    if used != set(causes):
        raise CatalogueError(
            f"{where} lists causes {sorted(causes)} but the images belong to causes {sorted(used)}. "
            "Delete causes.toml and causes.parquet to start over."
        )
    catalogue.causes = causes
    catalogue.history = [str(h) for h in data.get("history", [])]
    catalogue.next_id = max(int(data.get("next_id", 0)), max(causes, default=-1) + 1)
    return catalogue


def _check_fields(where: str, data: dict[str, Any], fix: str) -> None:
    """Check causes.toml against its schema (:class:`rca_gpu.runfiles.CausesFile`: types, ranges, string
    lengths, unknown fields), naming the file, the cause, the field, the value, the rule and the fix in one
    line (CatalogueError), e.g. a hand edit such as ``dropped = "no"`` or ``name = 42``; then refuse an id
    listed twice."""
    from rca_gpu.runfiles import CauseEntry, CausesFile, validate

    def word(problem: dict) -> str:
        loc, kind = problem["loc"], problem["type"]
        if loc[0] == "cause" and len(loc) >= 3 and isinstance(loc[1], int):
            entry, key, number = data["cause"][loc[1]], str(loc[2]), loc[1] + 1
            valid_id = isinstance(entry.get("id"), int) and not isinstance(entry.get("id"), bool) \
                and entry["id"] >= 0
            label = f"cause {entry['id']!r}" if valid_id else f"[[cause]] entry {number}"
            if kind == "missing":
                examples = CauseEntry.model_fields[key].examples
                example = f", e.g. {examples[0]}" if examples else ""
                return f"{where}: [[cause]] entry {number} has no {key}; every cause needs one{example}. {fix}"
            if kind == "extra_forbidden":
                return (f"{where}: {label} has an unknown field {key!r} (= {_toml_value(entry[key])}); a cause "
                        f"has only {', '.join(CauseEntry.model_fields)}. {fix}")
            return (f"{where}: {label} has {key} = {_toml_value(entry[key])}; {key} must be "
                    f"{_rule(CauseEntry.model_fields[key], problem)}. {fix}")
        key = str(loc[0])
        if kind == "extra_forbidden":
            return (f"{where} has an unknown field {key!r} (= {_toml_value(data[key])}); the file holds only "
                    f"{', '.join(CausesFile.model_fields)}. {fix}")
        rule = CausesFile.model_fields.get(key)
        if rule is None or rule.description is None or key not in data:
            return ""
        return f"{where} has {key} = {_toml_value(data[key])}; {key} must be {_rule(rule, problem)}. {fix}"

    validate(data, CausesFile, where, error=CatalogueError, fix=fix, messages=lambda p: word(p) or None)
    seen: set[int] = set()
    for entry in data.get("cause", []):
        if entry["id"] in seen:
            raise CatalogueError(f"{where} lists cause {entry['id']} twice; each id may appear once. {fix}")
        seen.add(entry["id"])


def _rule(info: Any, problem: dict) -> str:
    """A field's rule in words: its description and example for a value of the wrong type, pydantic's own
    words for a value of the right type out of range or too long (e.g. "at most 10000 characters")."""
    if problem["type"].endswith("_type") or problem["type"] in ("model_type", "list_type", "model_attributes_type"):
        return f"{info.description}, e.g. {info.examples[0]}"
    words = str(problem.get("msg", ""))
    for prefix in ("Value should have ", "String should have ", "List should have ", "Input should be "):
        words = words.removeprefix(prefix)
    return f"{info.description} ({words.rstrip('.')})"


def _plain_value(value: Any) -> str:
    """A run id or format as found, for messages: text as it is (one line, at most 64 characters)."""
    from rca_gpu.errors import printable

    return printable(value)[:64] if isinstance(value, str) else _toml_value(value)[:64]


def _toml_value(value: Any) -> str:
    """A value as written in TOML (``"no"``, ``42``, ``["a", "b"]``, ``true``), for messages (at most about
    80 characters)."""
    import json

    from rca_gpu.errors import printable

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return printable(text if len(text) <= 80 else text[:77] + "...")


def parse_edit(option: str, text: str) -> tuple[int, str | None]:
    """Split an edit value ``ID`` or ``ID=VALUE`` (``--name 3="rotated left"``, ``--split 5=3``)."""
    head, sep, tail = text.partition("=")
    try:
        cause = int(head.strip())
    except ValueError:
        raise CatalogueError(
            f"The {option} value {text!r} must start with a cause id, e.g. {option} 3"
            + ('="rotated left"' if option == "--name" else "") + "."
        ) from None
    if option == "--name" and not sep:
        raise CatalogueError(
            f"The --name value {text!r} must be CAUSE=NAME, e.g. --name {cause}=\"rotated left\" (--name {cause}= "
            "clears the name)."
        )
    return cause, (tail if sep else None)


def parse_ids(option: str, text: str) -> list[int]:
    """``4,7`` -> [4, 7] (for --merge)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CatalogueError(f"The {option} value {text!r} must be cause ids separated by commas, e.g. 4,7.") from None
