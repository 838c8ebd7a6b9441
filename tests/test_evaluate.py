"""Ground-truth metrics: hand-computed small cases, edge cases, runs on disk and the CLI command."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from rca_gpu.commands.evaluate import evaluate_command
from rca_gpu.errors import RcaError, SourceError, SpecError, TooFewImagesError
from rca_gpu.metrics import Evaluation, evaluate, evaluate_run, study_score
from rca_gpu.runfolder import RUN_FORMAT, RUN_ID_KEY, RunFolderError

approx = pytest.approx

# Twelve images, three causes, three clusters and three noise points:
#   cluster 0: a a a b   cluster 1: b b c   cluster 2: c c   noise: a b c
CLUSTERS = [0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1, -1]
CAUSES = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "a", "b", "c"]


@pytest.fixture
def worked() -> Evaluation:
    return evaluate(np.array(CLUSTERS), np.array(CAUSES))


# --------------------------------------------------------------------------------------------------
# Hand-computed metrics
# --------------------------------------------------------------------------------------------------


def test_per_cluster_dominant_cause_purity_and_counts(worked: Evaluation) -> None:
    pc = worked.per_cluster
    assert list(pc.columns) == ["cluster", "size", "dominant_cause", "purity", "n_a", "n_b", "n_c"]
    assert pc["cluster"].tolist() == [0, 1, 2]  # noise (-1) is not a cluster
    assert pc["size"].tolist() == [4, 3, 2]
    assert pc["dominant_cause"].tolist() == ["a", "b", "c"]
    # 3/4 a in cluster 0, 2/3 b in cluster 1, 2/2 c in cluster 2
    assert pc["purity"].tolist() == approx([0.75, 2 / 3, 1.0])
    assert pc[["n_a", "n_b", "n_c"]].to_numpy().tolist() == [[3, 1, 0], [0, 2, 1], [0, 0, 2]]


def test_summary_counts_purity_coverage_noise(worked: Evaluation) -> None:
    s = worked.summary
    assert (s["n_images"], s["n_clusters"], s["n_causes"], s["n_noise"]) == (12, 3, 3, 3)
    assert s["noise_share"] == approx(0.25)  # 3 / 12
    assert s["clusters_per_cause"] == approx(1.0)  # 3 / 3
    assert s["mean_purity"] == approx((0.75 + 2 / 3 + 1.0) / 3)  # = 0.80556, unweighted
    assert s["weighted_purity"] == approx(7 / 9)  # (3 + 2 + 2) / (4 + 3 + 2) clustered images
    assert s["coverage"] == approx(1.0)  # a, b, c each dominate a cluster with purity >= 0.5
    assert s["n_causes_covered"] == 3
    assert s["mean_recall"] == approx((3 / 4 + 2 / 4 + 2 / 4) / 3)  # = 0.58333


def test_per_cause_recall_dominance_noise(worked: Evaluation) -> None:
    pk = worked.per_cause
    assert list(pk.columns) == [
        "root_cause", "n_images", "recall", "n_clusters_dominated", "best_purity", "share_noise",
    ]
    assert pk["root_cause"].tolist() == ["a", "b", "c"]
    assert pk["n_images"].tolist() == [4, 4, 4]
    # a: 3 of its 4 images in cluster 0 (a-dominated); b: 2 of 4 in cluster 1; c: 2 of 4 in cluster 2.
    # b's image in cluster 0 and c's image in cluster 1 sit in clusters other causes dominate.
    assert pk["recall"].tolist() == approx([0.75, 0.5, 0.5])
    assert pk["n_clusters_dominated"].tolist() == [1, 1, 1]
    assert pk["best_purity"].tolist() == approx([0.75, 2 / 3, 1.0])
    assert pk["share_noise"].tolist() == approx([0.25, 0.25, 0.25])  # one noise image of 4 each


def test_ari_nmi_hand_computed(worked: Evaluation) -> None:
    s = worked.summary
    # Without noise (9 images), contingency rows (clusters) x columns (a, b, c): (3,1,0) (0,2,1) (0,0,2).
    #   sum C(n_ij, 2) = 3 + 1 + 1 = 5; rows C(4,2)+C(3,2)+C(2,2) = 10; columns 3 * C(3,2) = 9; C(9,2) = 36
    #   expected = 10 * 9 / 36 = 2.5; max = (10 + 9) / 2 = 9.5; ARI = (5 - 2.5) / (9.5 - 2.5) = 2.5 / 7
    assert s["ari_without_noise"] == approx(2.5 / 7)
    # With noise as a 4th label (row (1,1,1)): sum C(n_ij,2) = 5; rows 10 + C(3,2) = 13;
    #   columns 3 * C(4,2) = 18; C(12,2) = 66; expected = 13 * 18 / 66; max = (13 + 18) / 2 = 15.5
    expected = 13 * 18 / 66
    assert s["ari_with_noise"] == approx((5 - expected) / (15.5 - expected))  # = 0.12167
    assert 0 < s["nmi_with_noise"] < s["nmi_without_noise"] < 1


def test_noise_variants_differ_when_only_noise_is_wrong() -> None:
    # Clustered images are perfect (a a | b b); the two noise images are one a and one b.
    result = evaluate([0, 0, 1, 1, -1, -1], ["a", "a", "b", "b", "a", "b"])
    s = result.summary
    assert s["ari_without_noise"] == approx(1.0)
    assert s["nmi_without_noise"] == approx(1.0)
    # With noise: rows (2,0) (0,2) (1,1). sum C(n_ij,2) = 2; rows 3 * C(2,2) = 3; columns 2 * C(3,2) = 6;
    #   C(6,2) = 15; expected = 3 * 6 / 15 = 1.2; max = 4.5; ARI = (2 - 1.2) / (4.5 - 1.2) = 0.8 / 3.3
    assert s["ari_with_noise"] == approx(0.8 / 3.3)
    # NMI: H(causes) = ln 2, H(labels) = ln 3 (three labels of 2 images each);
    #   MI = 2 * (1/3) ln((1/3) / (1/3 * 1/2)) + 2 * (1/6) ln((1/6) / (1/3 * 1/2)) = (2/3) ln 2
    #   NMI (arithmetic) = MI / ((ln 2 + ln 3) / 2) = (4/3) ln 2 / ln 6 = 0.51580
    assert s["nmi_with_noise"] == approx((4 / 3) * math.log(2) / math.log(6))


def test_min_purity_applies_to_coverage_and_recall_alike() -> None:
    # Same clustering, threshold 0.7: cluster 1 (purity 2/3, dominated by b) no longer counts.
    result = evaluate(CLUSTERS, CAUSES, min_purity=0.7)
    assert result.summary["coverage"] == approx(2 / 3)  # a and c covered, b not
    pk = result.per_cause.set_index("root_cause")
    assert pk.loc["b", "recall"] == 0.0
    assert pk.loc["b", "n_clusters_dominated"] == 0
    assert pk.loc["b", "best_purity"] == approx(2 / 3)  # still reported: how close b came
    # A cause is covered exactly when its recall is > 0.
    covered = (result.per_cause["recall"] > 0).sum()
    assert covered == result.summary["n_causes_covered"] == 2


def test_cause_dominating_several_clusters() -> None:
    # a: clusters 0 (a a) and 1 (a a b); b: its one other image is noise.
    result = evaluate([0, 0, 1, 1, 1, -1], ["a", "a", "a", "a", "b", "b"])
    pk = result.per_cause.set_index("root_cause")
    assert pk.loc["a", "n_clusters_dominated"] == 2
    assert pk.loc["a", "recall"] == 1.0  # 4 / 4
    assert pk.loc["a", "best_purity"] == 1.0  # max(2/2, 2/3)
    assert pk.loc["b", "recall"] == 0.0
    assert math.isnan(pk.loc["b", "best_purity"])  # dominates nothing
    assert result.summary["coverage"] == 0.5  # 1 of 2 causes


# --------------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------------


def test_all_noise() -> None:
    result = evaluate([-1, -1, -1], ["a", "a", "b"])
    s = result.summary
    assert s["n_clusters"] == 0
    assert s["noise_share"] == 1.0
    assert s["mean_purity"] is None and s["weighted_purity"] is None
    assert s["coverage"] == 0.0 and s["mean_recall"] == 0.0
    assert s["ari_without_noise"] is None and s["nmi_without_noise"] is None
    # With noise: one label for all images vs two causes -> sklearn gives 0 for both.
    assert s["ari_with_noise"] == 0.0 and s["nmi_with_noise"] == 0.0
    assert s["study_score"] == 0.0
    assert result.per_cluster.empty
    assert list(result.per_cluster.columns) == ["cluster", "size", "dominant_cause", "purity", "n_a", "n_b"]
    assert result.per_cause["recall"].tolist() == [0.0, 0.0]
    assert result.per_cause["share_noise"].tolist() == [1.0, 1.0]
    payload = json.loads(result.to_json())
    assert payload["summary"]["mean_purity"] is None
    assert payload["per_cluster"] == []
    assert payload["per_cause"][0]["best_purity"] is None
    # One cause, all noise: one label vs one cause is scikit-learn's perfect agreement.
    one_cause = evaluate([-1, -1], ["a", "a"]).summary
    assert one_cause["ari_with_noise"] == one_cause["nmi_with_noise"] == 1.0
    assert one_cause["coverage"] == 0.0 and one_cause["study_score"] == 0.0


def test_single_cluster() -> None:
    result = evaluate([0, 0, 0, 0], ["a", "a", "a", "b"])
    s = result.summary
    assert s["mean_purity"] == s["weighted_purity"] == approx(0.75)  # 3 / 4
    assert s["coverage"] == 0.5  # a covered, b not
    assert result.per_cause["recall"].tolist() == [1.0, 0.0]
    # One cluster vs two causes: sum C(n_ij,2) = C(3,2) = 3; rows C(4,2) = 6; columns 3 + 0 = 3;
    #   expected = 6 * 3 / 6 = 3 = sum -> ARI 0; MI = 0 because the labels carry no information -> NMI 0.
    assert s["ari_with_noise"] == s["ari_without_noise"] == 0.0
    assert s["nmi_with_noise"] == s["nmi_without_noise"] == 0.0
    assert s["study_score"] == 0.0  # ARI 0


def test_single_cause() -> None:
    result = evaluate([0, 0, 1, -1], ["a", "a", "a", "a"])
    s = result.summary
    assert s["n_causes"] == 1 and s["n_clusters"] == 2
    assert s["coverage"] == 1.0
    assert s["weighted_purity"] == 1.0
    pk = result.per_cause.iloc[0]
    assert pk["recall"] == 0.75 and pk["n_clusters_dominated"] == 2 and pk["share_noise"] == 0.25
    # One cause, several labels: sum C(n_ij,2) = 1 = expected (1 * 6 / 6) -> ARI 0; H(causes) = 0 -> NMI 0.
    assert s["ari_with_noise"] == 0.0 and s["nmi_with_noise"] == 0.0
    assert s["study_score"] == 0.0  # ARI 0: one cause split over several labels


def test_single_cluster_single_cause_is_perfect_agreement() -> None:
    s = evaluate([3, 3], ["a", "a"]).summary
    assert s["ari_without_noise"] == 1.0 and s["nmi_without_noise"] == 1.0  # sklearn's convention


def test_ties_go_to_the_alphabetically_first_cause() -> None:
    for causes in (["b", "a"], ["a", "b"]):
        result = evaluate([5, 5], causes)
        assert result.per_cluster["dominant_cause"].tolist() == ["a"]
        assert result.per_cluster["purity"].tolist() == [0.5]
        # 0.5 >= min_purity 0.5, so the tie counts for a only.
        assert result.per_cause["recall"].tolist() == [1.0, 0.0]
        assert result.summary["coverage"] == 0.5
    # Python string order: upper case sorts before lower case.
    assert evaluate([0, 0], ["b", "Z"]).per_cluster["dominant_cause"].tolist() == ["Z"]


def test_inputs_are_normalised() -> None:
    as_lists = evaluate(CLUSTERS, CAUSES).summary
    as_floats = evaluate(np.array(CLUSTERS, dtype=float), pd.Series(CAUSES)).summary
    assert as_lists == as_floats
    digits = evaluate([0, 0, 1], [7, 7, 1])  # non-string causes are compared as strings
    assert digits.per_cause["root_cause"].tolist() == ["1", "7"]


def test_to_json_is_strict_json(worked: Evaluation) -> None:
    payload = json.loads(worked.to_json())
    assert set(payload) == {"summary", "per_cluster", "per_cause"}
    assert payload["summary"] == worked.summary
    assert payload["per_cluster"][0] == {
        "cluster": 0, "size": 4, "dominant_cause": "a", "purity": 0.75, "n_a": 3, "n_b": 1, "n_c": 0,
    }
    assert len(payload["per_cause"]) == 3


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(SpecError, match="clusters has 3 values but root_causes has 2"):
        evaluate([0, 0, 1], ["a", "b"])
    with pytest.raises(TooFewImagesError, match="Nothing to evaluate"):
        evaluate([], [])
    with pytest.raises(SpecError, match=r"'min_purity' parameter .* \[0, 1\]\. Got 1\.5"):
        evaluate([0], ["a"], min_purity=1.5)
    with pytest.raises(SpecError, match="ids >= 0, or -1 for noise. Got -2"):
        evaluate([0, -2], ["a", "b"])
    with pytest.raises(SpecError, match="integer cluster ids"):
        evaluate([0.5, 1.0], ["a", "b"])
    with pytest.raises(SpecError, match="1 missing value.*position 1"):
        evaluate([0, 0], ["a", None])
    with pytest.raises(SpecError, match="1-D"):
        evaluate([[0, 1]], [["a", "b"]])


# --------------------------------------------------------------------------------------------------
# study_score
# --------------------------------------------------------------------------------------------------


def _pure_split(n_causes: int, per_cause: int, clusters_per_cause: int, noise_per_cause: int = 0):
    """Pure clusters: each cause's images split evenly over its own clusters, plus some noise."""
    clusters, causes = [], []
    for k in range(n_causes):
        clustered = per_cause - noise_per_cause
        for i in range(clustered):
            clusters.append(k * clusters_per_cause + i % clusters_per_cause)
        clusters.extend([-1] * noise_per_cause)
        causes.extend([f"cause{k}"] * per_cause)
    return evaluate(clusters, causes).summary


def test_study_score_formula_by_hand() -> None:
    summary = {"ari_with_noise": 0.9, "coverage": 0.75, "coverage_injected": None, "n_clusters": 12}
    assert study_score(summary) == approx(0.9 * 0.75)
    assert study_score({**summary, "coverage_injected": 1.0}) == approx(0.9)  # injected causes when known
    assert study_score({**summary, "ari_with_noise": -0.1}) == 0.0  # worse than chance counts as 0
    assert study_score({**summary, "n_clusters": 0}) == 0.0


def test_study_score_penalises_fragmentation() -> None:
    scores = [_pure_split(2, 24, m)["study_score"] for m in (1, 2, 3, 6, 12)]
    assert scores[0] == approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(scores))  # every extra split costs
    assert scores[2] < 0.6  # three pure clusters per cause are far from one


def test_study_score_penalises_over_splitting_about_as_much_as_mixing() -> None:
    # 4 causes of 60 images. Split: each cause in two pure halves. Merged: two pairs of causes merged.
    causes = [f"c{k}" for k in range(4) for _ in range(60)]
    split = evaluate([2 * k + (i % 2) for k in range(4) for i in range(60)], causes).summary
    merged = evaluate([k // 2 for k in range(4) for _ in range(60)], causes).summary
    assert split["weighted_purity"] == 1.0 > merged["weighted_purity"] == 0.5
    assert split["study_score"] == approx(merged["study_score"] * 2, rel=0.35)  # the same order, not 1 vs 0.5
    assert split["study_score"] < 0.8 and merged["study_score"] < 0.5


def test_study_score_penalises_noise() -> None:
    scores = [_pure_split(2, 20, 1, noise)["study_score"] for noise in (0, 2, 8)]
    assert scores[0] == approx(1.0)
    assert scores[0] > scores[1] > scores[2]


def test_study_score_penalises_a_lost_rare_cause() -> None:
    # 3 causes, the third rare (4 of 104 images): merged into the first, ARI barely moves, coverage falls.
    causes = ["a"] * 50 + ["b"] * 50 + ["rare"] * 4
    kept = evaluate([0] * 50 + [1] * 50 + [2] * 4, causes).summary
    lost = evaluate([0] * 50 + [1] * 50 + [0] * 4, causes).summary
    assert lost["ari_with_noise"] > 0.9
    assert kept["study_score"] == approx(1.0) and lost["study_score"] < 0.67


def test_study_score_prefers_one_cluster_per_cause_to_many_tiny_pure_ones() -> None:
    # 4 causes of 50 images. Good: 4 clusters, 10 % of each cluster from another cause, 5 % noise.
    clusters, causes = [], []
    for k in range(4):
        clusters += [k] * 45 + [-1] * 3 + [k] * 2
        causes += [f"c{k}"] * 48 + [f"c{(k + 1) % 4}"] * 2
    good = evaluate(clusters, causes).summary
    # Fragmented: 10 pure clusters of 3 per cause, 40 % noise.
    fragmented = _pure_split(4, 50, 10, noise_per_cause=20)
    assert fragmented["weighted_purity"] == 1.0 > good["weighted_purity"]
    assert good["study_score"] > 2 * fragmented["study_score"]


def test_study_score_needs_its_keys() -> None:
    with pytest.raises(SpecError, match="missing: coverage, n_clusters"):
        study_score({"ari_with_noise": 1.0})


# --------------------------------------------------------------------------------------------------
# Runs on disk
# --------------------------------------------------------------------------------------------------


def _write_run(run_dir: Path, *, with_root_cause: bool = True) -> Path:
    """A clusters.parquet as `rca-gpu run` writes it: the worked example plus three rejected rows
    (cluster id null, one without a reason) and one clustered row whose root cause is unknown."""
    n_ok = len(CLUSTERS)
    columns = {
        "id": pa.array(range(n_ok + 4), pa.int64()),
        "path": pa.array([f"/data/img{i}.png" for i in range(n_ok + 4)]),
        "cluster": pa.array(CLUSTERS + [None, None, None, 0], pa.int64()),
        "status": pa.array(
            ["noise" if c == -1 else "clustered" for c in CLUSTERS] + ["rejected"] * 3 + ["clustered"]
        ),
        "reason": pa.array([""] * n_ok + ["unreadable image", "", "missing file", None]),
        "label": pa.array([1] * (n_ok + 4), pa.int64()),
    }
    if with_root_cause:
        columns["root_cause"] = pa.array(CAUSES + ["a", "b", "zz_only_rejected", None])
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_finished(run_dir, pa.table(columns))
    return run_dir


def _write_finished(run_dir: Path, clusters: pa.Table, run_id: str = "0123abcd") -> None:
    """clusters.parquet and run.json of one finished run, both carrying ``run_id``."""
    metadata = {**(clusters.schema.metadata or {}), RUN_ID_KEY: run_id.encode()}
    pq.write_table(clusters.replace_schema_metadata(metadata), run_dir / "clusters.parquet")
    (run_dir / "run.json").write_text(json.dumps({"rca_gpu_run": RUN_FORMAT, "run_id": run_id}))


def test_evaluate_run_writes_metrics_and_counts_rejected(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    result = evaluate_run(run_dir)
    # Only the 12 readable rows with a root cause are evaluated: same numbers as the worked example.
    assert result.summary == evaluate(CLUSTERS, CAUSES).summary
    assert result.counts == {
        "n_rows": 16,
        "n_rejected": 3,
        "rejected_by_reason": {"missing file": 1, "unknown": 1, "unreadable image": 1},
        "n_without_root_cause": 1,
        "n_evaluated": 12,
    }
    assert "zz_only_rejected" not in result.per_cause["root_cause"].tolist()

    payload = json.loads((run_dir / "metrics.json").read_text())
    assert set(payload) == {"run_id", "summary", "counts", "per_cluster", "per_cause"}
    assert payload["run_id"] == "0123abcd"
    assert payload["summary"]["weighted_purity"] == approx(7 / 9)
    assert payload["counts"]["n_rejected"] == 3
    assert [r["dominant_cause"] for r in payload["per_cluster"]] == ["a", "b", "c"]
    per_cause = pd.read_csv(run_dir / "per_cause.csv")
    assert per_cause["recall"].tolist() == approx([0.75, 0.5, 0.5])
    assert set(per_cause["run_id"]) == {"0123abcd"}
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "clusters.parquet", "metrics.json", "per_cause.csv", "run.json"]


def test_evaluate_run_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"'.*nowhere' does not exist .* finished `rca-gpu run`"):
        evaluate_run(tmp_path / "nowhere")
    run_dir = _write_run(tmp_path / "blind", with_root_cause=False)
    with pytest.raises(SourceError, match="has no root_cause column.*`rca-gpu run` again"):
        evaluate_run(run_dir)
    assert not (run_dir / "metrics.json").exists()


def test_evaluate_run_all_rejected(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    table = pa.table({
        "id": pa.array([0, 1], pa.int64()),
        "path": ["x.png", "y.png"],
        "cluster": pa.array([None, None], pa.int64()),
        "status": ["rejected", "rejected"],
        "reason": ["unreadable image"] * 2,
        "root_cause": ["a", "b"],
    })
    _write_finished(run_dir, table)
    with pytest.raises(TooFewImagesError, match="2 of 2 rows were rejected"):
        evaluate_run(run_dir)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("evaluate")(evaluate_command)

    @app.callback()
    def main() -> None:  # a callback keeps "evaluate" a sub-command, as in the main CLI
        pass

    return app


def test_cli_prints_tables_and_where_metrics_are(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    result = CliRunner().invoke(_app(), ["evaluate", str(run_dir), "--min-purity", "0.7"])
    assert result.exit_code == 0, result.output
    assert "Per root cause" in result.output
    assert "study score" in result.output
    assert re.search(r"coverage[^\n]*0\.667", result.output)  # 2 of 3 causes at min purity 0.7
    assert "3 rejected image(s), 1 without a root cause" in result.output
    assert f"Metrics written to {run_dir / 'metrics.json'}" in result.output
    assert json.loads((run_dir / "metrics.json").read_text())["summary"]["min_purity"] == 0.7


def test_cli_raises_rca_errors_for_the_main_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["evaluate", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, RunFolderError) and isinstance(result.exception, RcaError)
    assert "holds no run.json" in str(result.exception) and "rca-gpu run" in str(result.exception)


def test_coverage_of_injected_causes_leaves_out_none():
    # causes: none, a, a, b, b; the lone "none" image sits in a's cluster (0), b has cluster 1.
    # coverage counts 3 causes, 2 dominate a cluster: 2/3; coverage_injected counts a and b: 2/2.
    summary = evaluate([0, 0, 0, 1, 1], ["none", "a", "a", "b", "b"]).summary
    assert summary["coverage"] == pytest.approx(2 / 3)
    assert summary["coverage_injected"] == 1.0
    # without a "none" cause both agree
    plain = evaluate([0, 0, 1, 1], ["a", "a", "b", "b"]).summary
    assert plain["coverage_injected"] == plain["coverage"] == 1.0
    # only "none": nothing injected to cover
    assert evaluate([0, 0], ["none", "none"]).summary["coverage_injected"] is None


def test_cli_quiet_prints_only_where_metrics_are(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    result = CliRunner().invoke(_app(), ["evaluate", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Per root cause" not in result.output and "study score" not in result.output
    assert result.output.strip().startswith("Metrics written to")
    assert (run_dir / "metrics.json").is_file()


def test_cli_prints_absolute_paths_for_a_relative_run_folder(tmp_path: Path, monkeypatch) -> None:
    """Like every other command: the paths printed can be used from any folder."""
    run_dir = _write_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_app(), ["evaluate", "run", "--quiet"])
    assert result.exit_code == 0, result.output
    absolute = run_dir.resolve()
    assert " ".join(result.output.split()) == (f"Metrics written to {absolute / 'metrics.json'} and "
                                               f"{absolute / 'per_cause.csv'}")
