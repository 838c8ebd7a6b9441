"""Merge suggestions: which clusters may be one cause, with the evidence; `rca-gpu causes RUN --suggest`."""

from __future__ import annotations

import re
import shlex

import pandas as pd
import pytest
from typer.testing import CliRunner

runner = CliRunner()


def test_suggestions_join_pairs_into_merge_groups():
    from rca_gpu.report.suggest import LIKELY, Suggestion, merge_command, merge_groups

    def pair(a, b, confidence):
        return Suggestion(a, b, None, None, None, None, confidence, "")

    found = [pair(3, 6, 0.7), pair(6, 9, 0.6), pair(4, 8, 0.5), pair(1, 2, LIKELY - 0.01)]
    assert merge_groups(found) == [[3, 6, 9], [4, 8]]
    assert (merge_command("/runs/my run", merge_groups(found))
            == "rca-gpu causes '/runs/my run' --merge 3,6,9 --merge 4,8")
    assert merge_command("r", []) is None


def test_causes_suggest_prints_the_evidence_and_the_merge_command(catalogue_run, tmp_path):
    """Three planted groups, clustered into 4 by K-means: the two parts of the split group are suggested (same
    site, joined by kNN links) with the command that merges them; running it leaves one cause per group. On the
    catalogue's own run, 3 groups in 3 clusters, nothing is suggested."""
    from helpers import pattern_images, write_pngs

    from rca_gpu.catalogue import load_catalogue
    from rca_gpu.cli import app
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    result = runner.invoke(app, ["causes", str(catalogue_run), "--suggest", "-q"])
    assert result.exit_code == 0, result.output
    assert "no pair of causes reaches confidence 0.45: no merge to suggest" in result.output

    images, labels = pattern_images(n_per=40, groups=3, seed=4)
    paths = write_pngs(tmp_path / "imgs", images, labels)
    pd.DataFrame({"path": [f"imgs/{p.name}" for p in paths], "site": [f"G{g}" for g in labels]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    out = run(build_run_spec(pipeline="pixels+pca+kmeans(k=4)", device="cpu", workers=0, stability=0),
              tmp_path / "manifest.csv", tmp_path / "run", report=False)
    groups = out.clusters.assign(group=out.clusters["path"].str.extract(r"/g(\d)_")[0].astype(int))
    split = sorted(int(c) for c in next(v for v in groups.groupby("group")["cluster"].unique() if len(v) == 2))
    shown = runner.invoke(app, ["causes", str(tmp_path / "run"), "--suggest"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "Maybe the same cause" in shown.output and f"{split[0]} + {split[1]}" in shown.output
    assert "metadata alike 1.00" in shown.output and "(site)" in shown.output
    command = re.search(r"to merge the likely ones \(confidence >= 0\.45\): (.*)", shown.output).group(1)
    assert command == f"rca-gpu causes {(tmp_path / 'run').resolve()} --merge {split[0]},{split[1]}"
    merged = runner.invoke(app, shlex.split(command)[1:])
    assert merged.exit_code == 0, merged.output
    catalogue = load_catalogue(tmp_path / "run")
    assert len(catalogue.active) == 3 and catalogue.history == [f"merge {split[0]},{split[1]} -> {split[0]}"]


# --------------------------------------------------------------------------------------------------
# The demo: mnist-rc, 1500 failures, the default pipeline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(datasets_cache, tmp_path_factory):
    """`rca-gpu demo`'s run: mnist-rc (n=1500, seed 0) clustered by the default pipeline on the CPU."""
    from rca_gpu.datasets import make_dataset
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RCA_GPU_CACHE", str(datasets_cache))
        manifest = make_dataset("mnist-rc", root / "data", seed=0)
    run(build_run_spec(device="cpu", seed=0, workers=1), manifest, root / "run", report=False)
    return root / "run"


def _dominant(run_dir) -> pd.Series:
    from rca_gpu.runfolder import open_run

    clusters = open_run(run_dir).clusters()
    clustered = clusters[clusters["cluster"] >= 0]
    return clustered.groupby("cluster")["root_cause"].agg(lambda s: s.value_counts().index[0])


@pytest.mark.slow
def test_accepted_suggestions_bring_the_demo_to_its_causes_without_mixing_two(demo_run, tmp_path):
    """The suggestions, accepted, leave at most 1.2 x the 7 injected causes, and merge no two clusters whose
    dominant causes differ. With margin: every pair of clusters of different causes stays 0.05 below the
    confidence of a suggestion, and the suggestions 0.05 above it alone still leave at most 1.2 x 7 causes."""
    import shutil

    from rca_gpu.catalogue import load_catalogue
    from rca_gpu.cli import app
    from rca_gpu.report.suggest import LIKELY, merge_groups, suggest_merges

    folder = shutil.copytree(demo_run, tmp_path / "run")
    dominant = _dominant(folder)
    injected = 7  # mnist-rc's injected causes ("none" is no injected cause)
    pairs = suggest_merges(load_catalogue(folder), floor=0.0)
    print("clusters", len(dominant), dict(dominant), "\n" + "\n".join(
        f"{s.a}+{s.b} {dominant[s.a]}/{dominant[s.b]} {s.confidence:.3f} (metadata {s.metadata}, rules "
        f"{s.rules}, links {s.links})" for s in pairs if s.confidence >= 0.2))
    for s in pairs:
        if dominant[s.a] != dominant[s.b]:
            assert s.confidence < LIKELY - 0.05, s
    strict = merge_groups(pairs, at=LIKELY + 0.05)
    assert len(dominant) - sum(len(g) - 1 for g in strict) <= 1.2 * injected, strict
    result = runner.invoke(app, ["causes", str(folder), "--suggest", "-q"])
    assert result.exit_code == 0, result.output
    command = re.search(r"to merge the likely ones \(confidence >= [0-9.]+\): (.*)", result.output).group(1)
    accepted = runner.invoke(app, shlex.split(command)[1:])
    assert accepted.exit_code == 0, accepted.output
    catalogue = load_catalogue(folder)
    assert len(catalogue.active) <= 1.2 * injected, (len(catalogue.active), command)
    for cause in catalogue.active:
        assert len({dominant[c] for c in catalogue.causes[cause].clusters}) == 1, (cause, command)
    assert len(dominant) > len(catalogue.active)  # the demo's fragments were merged
