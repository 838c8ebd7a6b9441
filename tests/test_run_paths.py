"""One path rule for reading and writing: the readers of a run folder's image paths (export, compare, the
report's thumbnails) read, copy or link only the files the run's own rule allows (rca_gpu.data.sources)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import pattern_images, succeeded, write_pngs
from typer.testing import CliRunner

from rca_gpu.cli import app

runner = CliRunner()
PIPELINE = "pixels(image_size=16)+pca(n_components=5)+kmeans(k=3)"


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def escaping_run(tmp_path_factory) -> dict[str, Path]:
    """A manifest run whose image root is data/: 90 images inside, and two rows the run refused because
    their path escapes the root (a file outside, and a link inside that points outside)."""
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("escaping")
    images, labels = pattern_images(n_per=30, groups=3, size=16, seed=0)
    paths = write_pngs(root / "data" / "images", images, labels)
    outside = write_pngs(root / "outside", images[:1], labels[:1])[0]
    (root / "data" / "link.png").symlink_to(outside)
    rows = [str(p.relative_to(root / "data")) for p in paths] + [str(outside), "link.png"]
    pd.DataFrame({"path": rows}).to_csv(root / "data" / "manifest.csv", index=False)
    spec = build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, stability=0, cache_features=False)
    out = root / "run"
    run(spec, root / "data" / "manifest.csv", out, report=False)
    return {"root": root, "run": out, "outside": outside}


@pytest.fixture
def run_copy(escaping_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(escaping_run["run"], target)
    return target


def _links_and_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink() or (p.is_file() and p.suffix == ".png")]


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_export_never_copies_or_links_a_path_the_run_refused(escaping_run, tmp_path, mode):
    clusters = pd.read_parquet(escaping_run["run"] / "clusters.parquet")
    refused = clusters[clusters["reason"].str.contains("escapes the image root")]
    assert len(refused) == 2
    target = tmp_path / "exported"
    done = succeeded(_cli("export", escaping_run["run"], "--to", target, "--mode", mode))
    assert "exported 90 files" in done.output and "(2 listed without a file" in done.output
    made = _links_and_files(target)
    assert len(made) == 90
    outside = os.path.realpath(escaping_run["outside"])
    assert all(os.path.realpath(p) != outside for p in made)
    manifest = pd.read_csv(target / "rejected" / "manifest.csv", keep_default_na=False)
    assert (manifest["path"] == "").all() and manifest["not_exported"].str.contains("escapes the image root").all()


def test_export_refuses_a_path_changed_by_hand_in_clusters_parquet(run_copy, escaping_run, tmp_path):
    """A clustered row whose path was edited to a file outside the image root (or to a named pipe inside it,
    which would block a copy forever) is listed, not exported."""
    table = pq.read_table(run_copy / "clusters.parquet")
    paths = table.column("path").to_pylist()
    first = next(i for i, s in enumerate(table.column("status").to_pylist()) if s == "clustered")
    second = next(i for i, s in enumerate(table.column("status").to_pylist()) if s == "clustered" and i > first)
    fifo = escaping_run["root"] / "data" / f"pipe_{os.getpid()}_{first}.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    paths[first] = str(escaping_run["outside"])
    paths[second] = str(fifo)
    table = table.set_column(table.column_names.index("path"), "path", pa.array(paths))
    pq.write_table(table, run_copy / "clusters.parquet")
    target = tmp_path / "exported"
    done = succeeded(_cli("export", run_copy, "--to", target, "--mode", "copy"))
    assert "exported 88 files" in done.output
    notes = pd.concat([pd.read_csv(m, keep_default_na=False) for m in target.glob("cluster-*/manifest.csv")])
    reasons = notes.loc[notes["path"] == "", "not_exported"].tolist()
    escapes = (f"path escapes the image root {str(escaping_run['root'] / 'data')!r} (symbolic links followed); "
               "use --image-root to allow another folder")
    assert sorted(reasons) == ["a named pipe (FIFO), not a file", escapes]


def test_the_report_makes_no_thumbnail_of_a_refused_path(run_copy, escaping_run):
    table = pq.read_table(run_copy / "clusters.parquet")
    paths = table.column("path").to_pylist()
    position = next(i for i, s in enumerate(table.column("status").to_pylist()) if s == "clustered")
    paths[position] = str(escaping_run["outside"])  # a readable PNG, but outside the run's image root
    table = table.set_column(table.column_names.index("path"), "path", pa.array(paths))
    pq.write_table(table, run_copy / "clusters.parquet")
    from rca_gpu.report.build import build_report
    from rca_gpu.report.thumbnails import thumbnail_name

    build_report(run_copy)
    thumbs = run_copy / "report_files" / "thumbs"
    assert not (thumbs / thumbnail_name(position)).exists()
    assert len(list(thumbs.glob("*.jpg"))) == 90 - 1


def test_compare_assigns_only_files_run_b_may_read(run_copy, escaping_run, tmp_path):
    """compare --by assign re-reads run B's images: a path edited to a file outside B's image root is not
    read (counted as unreadable), the others are."""
    from rca_gpu.catalogue.compare import compare_runs

    table = pq.read_table(run_copy / "clusters.parquet")
    paths = table.column("path").to_pylist()
    position = next(i for i, s in enumerate(table.column("status").to_pylist()) if s == "clustered")
    paths[position] = str(escaping_run["outside"])
    table = table.set_column(table.column_names.index("path"), "path", pa.array(paths))
    pq.write_table(table, run_copy / "clusters.parquet")
    result = compare_runs(escaping_run["run"], run_copy, by="assign", device="cpu", workers=0, write=False)
    assert result.info["images"]["unreadable"] == 1 and result.info["images"]["assigned"] == 89


def test_the_run_records_its_image_root(escaping_run):
    from rca_gpu.runfolder import open_run

    run = open_run(escaping_run["run"])
    assert run.info["source"]["root"] == str((escaping_run["root"] / "data").resolve()) == run.image_root
    files = run.image_files([str(escaping_run["outside"]), "", "array://3", str(escaping_run["root"] / "data" /
                                                                                  "images" / "g0_0000.png")])
    assert files[0] == "" and "escapes the image root" in files.reason(0)
    assert files[1] == "" and files[2] == "" and files[3].endswith("g0_0000.png") and files.reason(3) == ""
