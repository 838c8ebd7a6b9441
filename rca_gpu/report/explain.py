"""Explanations of clusters: short one-vs-rest rules over metadata and image properties, in plain words.

For each cluster a shallow scikit-learn decision tree learns to separate the cluster's images from the
other usable images (the other clusters and the noise), in the manner of sliceguard. Every node of the tree
is a candidate rule: the conjunction of the splits on its path. Thresholds are rounded to three significant
digits, conditions on one column are merged ("0.2 <= brightness < 0.5"), and each rule is then evaluated
as written on every usable image, so the precision and recall shown are those of the printed rule:

- precision: share of the images matching the rule that belong to the cluster;
- recall: share of the cluster's images that match the rule.

A rule is reported only when its precision reaches ``precision_floor`` (0.8 by default); otherwise the
cluster has no rule and the best candidate is kept, marked ``found = False``. Three trees are grown per
cluster (metadata and image properties together, metadata alone, image properties alone) so a cluster
explained by a metadata column also shows its best rule in terms of the images, where one exists.

Columns never used: the run's own (id, path, cluster, status, reason), ``root_cause`` (the ground truth
the rules must not lean on), text columns with a distinct value per row (names) or too many levels, and
identifiers read as quantities: a column named like an identifier (``id``, ``index``, ``idx``, ``key``,
``uuid``, ``seed``, ``row``, ``rowid``, alone or as a suffix such as ``source_index``, ``scene_id``, ``frameId``,
``op_seed``, ``manifest_row``) whose integers have more than :data:`INTEGER_AS_CATEGORY` distinct values. A
range of identifiers ("source_index >= 3036"), of random seeds ("op_seed < 81408472") or of manifest row
numbers names no property of the images; an identifier with a few values is kept as a category
("scene_id = 12": all from one scene).

Frame numbers and timestamps (``frame``, ``frame_number``, ``timestamp``, ``time``) are kept as quantities on
purpose: they order the images in time, and a time window ("timestamp >= 1.7e9", "frame < 300": the images
recorded after the lens fogged up) is a real explanation of a failure. Only a name ending in an identifier
word (``frame_id``, ``frameIndex``) marks such a column as an identifier.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Default precision a rule needs to be reported.
PRECISION_FLOOR = 0.8
#: Default depth of the trees: at most this many conditions per rule.
MAX_DEPTH = 3
#: Rules kept per cluster.
MAX_RULES = 3
#: A rule must match at least this share of its cluster to count as an explanation.
MIN_RECALL = 0.1
#: Columns rca-gpu writes itself, or the ground truth: never explanatory.
EXCLUDED_COLUMNS = ("id", "path", "path_bytes", "input_path", "cluster", "status", "reason", "root_cause")
#: Prefix of image-property columns (see rca_gpu.data.properties).
PROPERTY_PREFIX = "img_"
#: Text columns with more distinct values than this are not used; the most common levels become 0/1 columns.
MAX_LEVELS = 50
TOP_LEVELS = 20
#: Integer columns with at most this many distinct values are read as categories ("label = 7").
INTEGER_AS_CATEGORY = 12
#: Names (case-insensitive, alone or after ``_``, ``-``, ``.``, a space or a lower-case letter) of identifier
#: columns: never used as quantities. ``seed`` (a random seed such as ``op_seed``) and ``row`` (a manifest row
#: number) name no property of the images either; frame numbers and timestamps are not listed (a time window
#: explains).
IDENTIFIER_NAMES = ("id", "index", "idx", "key", "uuid", "seed", "row", "rowid")
#: Rows per class the trees are fitted on (rules are then evaluated on every row).
FIT_ROWS = 20_000

EXPLANATION_COLUMNS = ("cluster", "rank", "found", "rule", "precision", "recall", "n_matched", "n_cluster",
                       "uses", "conditions")


@dataclass(frozen=True)
class Condition:
    """One condition of a rule: ``column op value`` with op in ``<``, ``>=``, ``==``, ``!=``, or ``set`` /
    ``missing`` (the value is present / absent; ``value`` unused)."""

    column: str
    op: str
    value: Any

    def mask(self, frame: pd.DataFrame | _Columns) -> np.ndarray:
        """Boolean (n,) of the rows meeting the condition; a missing value meets none."""
        columns = frame if isinstance(frame, _Columns) else _Columns(frame)
        if self.op in ("==", "!="):
            text, present = columns.text(self.column)
            return present & ((text == self.value) if self.op == "==" else (text != self.value))
        numbers = columns.numbers(self.column)
        if self.op in ("set", "missing"):
            present = ~np.isnan(numbers)
            return present if self.op == "set" else ~present
        with np.errstate(invalid="ignore"):
            return numbers < self.value if self.op == "<" else numbers >= self.value


class _Columns:
    """A DataFrame's columns converted once (text and numbers), for evaluating many rules."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._text: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._numbers: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def text(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        if column not in self._text:
            self._text[column] = (_as_text(self.frame[column]), self.frame[column].notna().to_numpy())
        return self._text[column]

    def numbers(self, column: str) -> np.ndarray:
        if column not in self._numbers:
            self._numbers[column] = pd.to_numeric(self.frame[column], errors="coerce").to_numpy(dtype=float)
        return self._numbers[column]


def _as_text(values: pd.Series) -> np.ndarray:
    """Values as the strings rules compare with (integral numbers without a decimal point)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        finite = numbers[np.isfinite(numbers)]
        if len(finite) and np.all(finite == np.round(finite)):
            whole = numbers.where(np.isfinite(numbers)).round().astype("Int64").astype("string")
            return whole.to_numpy(dtype=object, na_value=None)
    return values.astype(str).to_numpy(dtype=object)


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]

    def mask(self, frame: pd.DataFrame | _Columns) -> np.ndarray:
        """Boolean (n,) of the rows meeting every condition."""
        columns = frame if isinstance(frame, _Columns) else _Columns(frame)
        out = np.ones(len(columns), dtype=bool)
        for condition in self.conditions:
            out &= condition.mask(columns)
        return out

    @property
    def uses(self) -> str:
        kinds = {"image" if c.column.startswith(PROPERTY_PREFIX) else "metadata" for c in self.conditions}
        return "both" if len(kinds) == 2 else kinds.pop()

    def text(self) -> str:
        """The rule in plain words, conditions on one column merged, e.g. ``sharpness < 12 and label = 7``."""
        parts = []
        for column in dict.fromkeys(c.column for c in self.conditions):
            mine = [c for c in self.conditions if c.column == column]
            name = display_name(column)
            if any(c.op == "missing" for c in mine):
                parts.append(f"{name} is missing")
                continue
            if any(c.op == "set" for c in mine) and all(c.op == "set" for c in mine):
                parts.append(f"{name} is set")
                continue
            equal = [c.value for c in mine if c.op == "=="]
            if equal:
                parts.append(f"{name} = {_quote(equal[0])}")
                continue
            unequal = [c.value for c in mine if c.op == "!="]
            if unequal:
                parts.append(f"{name} ≠ {_quote(unequal[0])}" if len(unequal) == 1 else
                             f"{name} not in {{{', '.join(_quote(v) for v in unequal)}}}")
            low = [c.value for c in mine if c.op == ">="]
            high = [c.value for c in mine if c.op == "<"]
            if low and high:
                parts.append(f"{_number(max(low))} <= {name} < {_number(min(high))}")
            elif low:
                parts.append(f"{name} >= {_number(max(low))}")
            elif high:
                parts.append(f"{name} < {_number(min(high))}")
        return " and ".join(parts)


def display_name(column: str) -> str:
    """How a column is named in rules: image properties without their ``img_`` prefix."""
    return column[len(PROPERTY_PREFIX):] if column.startswith(PROPERTY_PREFIX) else column


def explain_clusters(
    clusters: pd.DataFrame,
    *,
    precision_floor: float = PRECISION_FLOOR,
    max_depth: int = MAX_DEPTH,
    max_rules: int = MAX_RULES,
    seed: int = 0,
) -> pd.DataFrame:
    """One-vs-rest rules for every cluster of a clusters table.

    Parameters
    ----------
    clusters:
        ``clusters.parquet`` as a DataFrame: ``cluster`` (int, -1 = noise), ``status`` and any metadata or
        ``img_*`` property columns. Rejected rows are ignored; noise is part of "the rest" but is not
        explained.
    precision_floor:
        Precision in [0, 1] a rule needs to be reported.
    max_depth:
        Depth of each tree, i.e. the most conditions in a rule (>= 1).
    max_rules:
        Rules kept per cluster (>= 1), best first by F1 of precision and recall.
    seed:
        Seed of the trees and of the fitting sample (clusters above :data:`FIT_ROWS` images).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`EXPLANATION_COLUMNS`: ``cluster`` (int), ``rank`` (1 = top), ``found`` (precision
        reached the floor), ``rule`` (plain words), ``precision``/``recall`` (float, of the rule as written),
        ``n_matched`` (images matching), ``n_cluster`` (cluster size), ``uses`` ("metadata", "image" or
        "both"), ``conditions`` (JSON list of [column, op, value]). A cluster with no usable column has no
        row; one whose best rule misses the floor has one row with ``found = False``.

    Raises
    ------
    ValueError
        ``precision_floor`` outside [0, 1], or ``max_depth`` / ``max_rules`` below 1.
    """
    if not 0.0 <= precision_floor <= 1.0:
        raise ValueError(f"precision_floor must be in [0, 1]; got {precision_floor}.")
    if max_depth < 1 or max_rules < 1:
        raise ValueError(f"max_depth and max_rules must be >= 1; got {max_depth} and {max_rules}.")
    usable = clusters[clusters["status"] != "rejected"].reset_index(drop=True)
    rows: list[dict[str, Any]] = []
    labels = usable["cluster"].to_numpy()
    ids = sorted(int(c) for c in np.unique(labels) if c >= 0)
    if len(ids) < 1 or len(usable) < 2:
        return pd.DataFrame(columns=list(EXPLANATION_COLUMNS))
    design, origin = design_matrix(usable)
    if design.shape[1] == 0:
        return pd.DataFrame(columns=list(EXPLANATION_COLUMNS))
    groups = {
        "all": list(range(design.shape[1])),
        "metadata": [j for j, (col, _, _) in enumerate(origin) if not col.startswith(PROPERTY_PREFIX)],
        "image": [j for j, (col, _, _) in enumerate(origin) if col.startswith(PROPERTY_PREFIX)],
    }
    rng = np.random.default_rng(seed)
    columns_cache = _Columns(usable)
    for cluster in ids:
        target = labels == cluster
        if target.all():  # one cluster and no noise: nothing to separate it from
            continue
        fit_rows = _fit_sample(target, rng)
        candidates: dict[str, tuple[Rule, float, float, int]] = {}
        for columns in groups.values():
            if not columns:
                continue
            for rule in _tree_rules(design[np.ix_(fit_rows, np.asarray(columns))], target[fit_rows],
                                    [origin[j] for j in columns], max_depth, seed):
                text = rule.text()
                if text in candidates:
                    continue
                matched = rule.mask(columns_cache)
                hits = int((matched & target).sum())
                precision = hits / matched.sum() if matched.any() else 0.0
                candidates[text] = (rule, precision, hits / target.sum(), int(matched.sum()))
        if not candidates:
            continue
        ranked = sorted(candidates.items(), key=lambda kv: (-_f1(kv[1][1], kv[1][2]), len(kv[1][0].conditions)))
        passing = [kv for kv in ranked if kv[1][1] >= precision_floor and kv[1][2] >= MIN_RECALL]
        chosen = _diverse(passing, max_rules) if passing else [_best_failing(ranked)]
        for rank, (text, (rule, precision, recall, n_matched)) in enumerate(chosen, start=1):
            rows.append({
                "cluster": cluster, "rank": rank, "found": bool(passing), "rule": text,
                "precision": float(precision), "recall": float(recall), "n_matched": n_matched,
                "n_cluster": int(target.sum()), "uses": rule.uses,
                "conditions": json.dumps([[c.column, c.op, _plain(c.value)] for c in rule.conditions]),
            })
    return pd.DataFrame(rows, columns=list(EXPLANATION_COLUMNS))


def top_explanations(explanations: pd.DataFrame | None, *, short: bool = False,
                     floor: float = PRECISION_FLOOR) -> dict[int, str]:
    """cluster -> the top rule with its precision and recall, or the reason there is none (``floor``: the
    precision floor the explanations were made with)."""
    if explanations is None or explanations.empty:
        return {}
    out = {}
    for row in explanations[explanations["rank"] == 1].itertuples(index=False):
        out[int(row.cluster)] = describe(row, short=short, floor=floor)
    return out


def describe(row, *, short: bool = False, elsewhere: str = "", floor: float = PRECISION_FLOOR) -> str:
    """One explanation row in words: ``rule (precision 0.93, recall 0.81)``, or, when no rule qualifies
    (``found`` False), why not, with the figures of the best candidate (:func:`_best_failing`):

    - too imprecise: ``no rule reaches precision 0.8: the best, R, matches 133 of the 164 images but also 137
      others (precision 0.49)``;
    - too narrow: ``no rule covers 10% of the cluster at precision 0.8: the best, R, covers 2 of the 153 images``.

    ``short`` (the terminal) leaves out the rule's text; ``elsewhere`` ("72 in cluster 6, 20 noise") says where the
    other matched images are; ``floor`` is the precision floor the explanations were made with.
    """
    if row.found:
        return f"{row.rule} (precision {row.precision:.2f}, recall {row.recall:.2f})"
    n_cluster = int(row.n_cluster)
    hits = int(round(float(row.recall) * n_cluster))
    others = max(int(row.n_matched) - hits, 0)
    best = "the best" if short else f"the best, {row.rule},"
    if row.precision >= floor:  # precise enough, but it covers too few of the cluster
        return (f"no rule covers {MIN_RECALL:.0%} of the cluster at precision {floor:g}: {best} covers "
                f"{hits} of the {n_cluster} images (recall {row.recall:.2f})")
    where = f": {elsewhere}" if elsewhere else ""
    return (f"no rule reaches precision {floor:g}: {best} matches {hits} of the {n_cluster} images but "
            f"also {others} other{'s' if others != 1 else ''}{where} (precision {row.precision:.2f})")


def rule_masks(explanations: pd.DataFrame, usable: pd.DataFrame) -> dict[int, np.ndarray]:
    """cluster -> (len(usable),) bool: the images of ``usable`` (clusters.parquet without rejected rows) that the
    cluster's top rule (rank 1, found or best candidate) matches, evaluated as written."""
    columns = _Columns(usable.reset_index(drop=True))
    out = {}
    for row in explanations[explanations["rank"] == 1].itertuples(index=False):
        rule = Rule(tuple(Condition(*c) for c in json.loads(row.conditions)))
        try:
            out[int(row.cluster)] = rule.mask(columns)
        except KeyError:  # a rule over a column the table lacks: it matches nothing here
            out[int(row.cluster)] = np.zeros(len(usable), dtype=bool)
    return out


def _best_failing(ranked: list) -> tuple:
    """The candidate shown when no rule qualifies: the best by F1 among those that cover at least MIN_RECALL of
    the cluster (a rule matching a handful of images says little), else the one covering most of it."""
    wide = [kv for kv in ranked if kv[1][2] >= MIN_RECALL]
    return wide[0] if wide else max(ranked, key=lambda kv: (kv[1][2], kv[1][1]))


# --------------------------------------------------------------------------------------------------


def is_identifier(column: str) -> bool:
    """Whether the column's name marks an identifier (see :data:`IDENTIFIER_NAMES`): ``id``, ``source_index``,
    ``scene-id``, ``frameId``, ``UUID``, ``op_seed``, ``manifest_row`` are; ``width``, ``video``, ``monkey``,
    ``candidate``, ``arrow``, ``frame_number`` and ``timestamp`` are not."""
    names = "|".join(IDENTIFIER_NAMES)
    return bool(re.search(rf"(?:^|[_\-. ])(?:{names})$", column, flags=re.IGNORECASE)
                or re.search(rf"[a-z](?:{'|'.join(n.capitalize() for n in IDENTIFIER_NAMES)}|ID|IDX|UUID)$",
                             column))


def design_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str, Any]]]:
    """Numeric matrix (n, p) float64 (NaN = missing) of the explanatory columns, and per matrix column its
    origin ``(column, kind, level)``: kind "number" (level None) or "level" (a 0/1 indicator of one level)."""
    blocks: list[np.ndarray] = []
    origin: list[tuple[str, str, Any]] = []
    n = len(frame)
    for column in frame.columns:
        if column in EXCLUDED_COLUMNS:
            continue
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            values = values.astype(str)
        if pd.api.types.is_numeric_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, copy=True)
            finite = numbers[np.isfinite(numbers)]
            if finite.size == 0 or np.unique(finite).size < 2:
                continue
            integral = np.all(finite == np.round(finite))
            if integral and np.unique(finite).size > INTEGER_AS_CATEGORY and is_identifier(column):
                continue  # a range of identifiers explains nothing
            if not (integral and np.unique(finite).size <= INTEGER_AS_CATEGORY):
                numbers[~np.isfinite(numbers)] = np.nan
                blocks.append(numbers[:, None])
                origin.append((column, "number", None))
                continue
        text = pd.Series(_as_text(values), index=values.index, dtype="string")
        counts = text.value_counts(dropna=True)
        if len(counts) < 2 or len(counts) > MAX_LEVELS or len(counts) >= 0.5 * n:
            continue  # constant, or a name per row: explains nothing
        levels = counts.index[1:] if len(counts) == 2 else counts.index[:TOP_LEVELS]  # 2 levels: the rarer says it
        for level in levels:
            blocks.append((text == level).fillna(False).to_numpy(dtype=float)[:, None])
            origin.append((column, "level", str(level)))
    if not blocks:
        return np.zeros((n, 0)), []
    return np.hstack(blocks), origin


def _fit_sample(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    inside, outside = np.flatnonzero(target), np.flatnonzero(~target)
    if len(inside) > FIT_ROWS:
        inside = np.sort(rng.choice(inside, FIT_ROWS, replace=False))
    if len(outside) > FIT_ROWS:
        outside = np.sort(rng.choice(outside, FIT_ROWS, replace=False))
    return np.concatenate([inside, outside])


def _tree_rules(x: np.ndarray, y: np.ndarray, origin: Sequence[tuple[str, str, Any]], max_depth: int,
                seed: int) -> list[Rule]:
    """Every node's path of a balanced one-vs-rest tree, as a rule (the root excluded)."""
    from sklearn.tree import DecisionTreeClassifier

    keep = ~np.all(np.isnan(x), axis=0)
    if not keep.any():
        return []
    tree = DecisionTreeClassifier(max_depth=max_depth, class_weight="balanced", random_state=seed,
                                  min_samples_leaf=max(2, int(0.02 * y.sum())))
    tree.fit(x, y)
    t = tree.tree_
    rules: list[Rule] = []

    def walk(node: int, path: tuple[Condition, ...]) -> None:
        if path:
            rules.append(Rule(path))
        left, right = t.children_left[node], t.children_right[node]
        if left == right:  # a leaf
            return
        column, kind, level = origin[t.feature[node]]
        if kind == "level":  # indicator <= 0.5 on the left: the level is absent
            walk(left, path + (Condition(column, "!=", level),))
            walk(right, path + (Condition(column, "==", level),))
        elif not math.isfinite(float(t.threshold[node])):  # sklearn's split of present vs missing values
            walk(left, path + (Condition(column, "set", None),))
            walk(right, path + (Condition(column, "missing", None),))
        else:
            threshold = _round(float(t.threshold[node]))
            walk(left, path + (Condition(column, "<", threshold),))
            walk(right, path + (Condition(column, ">=", threshold),))

    walk(0, ())
    return rules


def _diverse(passing, max_rules: int):
    """The best rules, with the best rule of each kind (metadata / image) among them when one passes, and
    no rule that only adds conditions to a rule already chosen."""
    chosen = [passing[0]]

    def new(kv) -> bool:
        conditions = set(kv[1][0].conditions)
        return all(not set(c[1][0].conditions) <= conditions for c in chosen)

    for kind in ("metadata", "image"):
        if len(chosen) >= max_rules:
            break
        if all(kv[1][0].uses != kind for kv in chosen):
            best = next((kv for kv in passing if kv[1][0].uses == kind and new(kv)), None)
            if best is not None:
                chosen.append(best)
    for kv in passing:
        if len(chosen) >= max_rules:
            break
        if kv not in chosen and new(kv):
            chosen.append(kv)
    order = {id(kv): i for i, kv in enumerate(passing)}
    return sorted(chosen, key=lambda kv: order[id(kv)])


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _round(value: float) -> float:
    """Three significant digits (integers kept whole from 1000 up)."""
    if value == 0 or not math.isfinite(value):
        return value
    if abs(value) >= 1000:
        return float(round(value))
    return float(f"{value:.3g}")


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:g}"


def _quote(value: Any) -> str:
    return str(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
