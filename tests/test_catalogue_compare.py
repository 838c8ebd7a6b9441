"""Comparison of two runs: a cause that run B lacks is reported vanished, a cause only B has is new."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import CATALOGUE_PIPELINE
from helpers import pattern_images, write_pngs

from rca_gpu.catalogue import CatalogueError, load_catalogue
from rca_gpu.catalogue.compare import COMPARISON_FILE, compare_runs
from rca_gpu.pipeline import run
from rca_gpu.runfolder import open_run
from rca_gpu.spec import build_run_spec


def _group_of_cause(folder) -> dict[int, int]:
    clusters = open_run(folder).clusters()
    groups = clusters["path"].str.extract(r"/g(\d)_")[0].astype(int)
    return {int(c): int(g) for c, g in zip(clusters["cluster"], groups, strict=True) if c >= 0}


def _run_b(images_root, paths, out):
    """Run B on a manifest in ``images_root`` listing ``paths`` (inside it)."""
    manifest = images_root / f"{out.name}.csv"
    pd.DataFrame({"path": [str(p.relative_to(images_root)) for p in paths]}).to_csv(manifest, index=False)
    spec = build_run_spec(pipeline=CATALOGUE_PIPELINE, device="cpu", workers=0, stability=0, cache_features=False)
    run(spec, manifest, out)
    return out


@pytest.fixture(scope="module")
def runs_b(catalogue_images, tmp_path_factory):
    """B by shared images: A's files of groups 0 and 1 plus new files of group 3. B by assignment: 30 new files
    each of groups 0, 1 and 3 (no file in common with A)."""
    root = catalogue_images
    out = tmp_path_factory.mktemp("runs_b")
    shared = sorted(p for g in (0, 1) for p in (root / "run").glob(f"g{g}_*.png"))
    group3 = sorted((root / "new").glob("g3_*.png"))
    images, labels = pattern_images(n_per=30, groups=4, size=16, seed=2)
    keep = labels != 2
    fresh = write_pngs(out / "fresh_images", images[keep], labels[keep])
    return {"images": _run_b(root, shared + group3, out / "shared"),
            "assign": _run_b(out / "fresh_images", fresh, out / "fresh")}


def _statuses(result, run_a, run_b) -> dict[str, str]:
    """planted group -> status ("a2" for A's cluster of group 2, "b3" for B's cluster of group 3)."""
    groups_a, groups_b = _group_of_cause(run_a), _group_of_cause(run_b)
    out = {}
    for row in result.table.itertuples():
        key = f"a{groups_a[row.cause_a]}" if row.cause_a >= 0 else f"b{groups_b[row.cause_b]}"
        out[key] = row.status
    return out


@pytest.mark.quality
@pytest.mark.parametrize("kind", ["images", "assign"])
def test_a_cause_missing_from_b_vanished_and_a_cause_only_in_b_is_new(catalogue_run, runs_b, kind):
    run_b = runs_b[kind]
    result = compare_runs(catalogue_run, run_b, device="cpu", workers=0)
    assert _statuses(result, catalogue_run, run_b) == {"a0": "persists", "a1": "persists", "a2": "vanished",
                                                      "b3": "new"}
    assert result.info["mode"] == ("images+assign" if kind == "images" else "assign")
    assert result.info["images"]["shared"] == (60 if kind == "images" else 0)
    persisting = result.table[result.table["status"] == "persists"]
    assert (persisting["size_a"] == 30).all()
    if kind == "images":  # shared images keep their cause in A
        assert (persisting["size_b"] == 30).all()
    else:  # assigned, less the few beyond a radius
        assert persisting["size_b"].between(20, 30).all()
    written = open_run(run_b).table(COMPARISON_FILE)  # in B's folder, under B's run id
    assert len(written) == 4 and (written["run_a"] == open_run(catalogue_run).run_id).all()
    assert open_run(run_b).json("comparison.json")["statuses"] == {"persists": 2, "grew": 0, "shrank": 0,
                                                                    "vanished": 1, "new": 1}
    # B holds 60 of A's images and 12 of group 3 (72: shares), or 90 new images (as many as A: counts)
    assert (result.info["images_b"], result.info["basis"]) == ((72, "shares") if kind == "images" else (90, "counts"))


def test_by_images_uses_shared_images_only_and_needs_some(catalogue_run, runs_b):
    result = compare_runs(catalogue_run, runs_b["images"], by="images", write=False)
    assert result.info["images"]["assigned"] == 0 and result.info["mode"] == "images"
    assert _statuses(result, catalogue_run, runs_b["images"])["b3"] == "new"
    with pytest.raises(CatalogueError, match="share no image .* Use --by assign"):
        compare_runs(catalogue_run, runs_b["assign"], by="images", write=False)


def test_compare_uses_edited_catalogues(catalogue_run, runs_b, tmp_path):
    import shutil

    run_a = shutil.copytree(catalogue_run, tmp_path / "a")
    groups = {g: c for c, g in _group_of_cause(run_a).items()}
    catalogue = load_catalogue(run_a)
    catalogue.rename(groups[0], "top bar")
    catalogue.drop(groups[2])
    catalogue.save()
    result = compare_runs(run_a, runs_b["images"], by="images", write=False)
    assert list(result.table.loc[result.table["status"] == "persists", "name_a"]).count("top bar") == 1
    assert groups[2] not in set(result.table["cause_a"])  # a dropped cause takes no part


def test_compare_command_and_its_errors(catalogue_run, runs_b, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rca_gpu.cli", "compare", *map(str, args)],
                              capture_output=True, text=True)

    done = cli(catalogue_run, runs_b["images"], "--by", "images")
    assert done.returncode == 0, done.stderr
    assert "vanished" in done.stdout and "new" in done.stdout and "comparison.parquet" in done.stdout
    failed = cli(catalogue_run, runs_b["assign"], "--by", "images")
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and "share no image" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_a_cause_spread_over_b_is_named_and_a_run_compared_with_itself_is_said():
    import pandas as pd

    from rca_gpu.commands.compare import main_share, spread_causes

    assert main_share("4 (21), 7 (13), 11 (66)", 100) == 0.66 and main_share("", 10) is None
    table = pd.DataFrame({"cause_a": [0, 1, -1], "name_a": ["blurred", "", ""], "size_a": [100, 50, 0],
                          "b_causes": ["4 (21), 7 (79)", "2 (46), 5 (4)", ""]})
    assert spread_causes(table) == ["0 blurred 79%"]


def test_compare_of_a_run_with_itself_says_so(catalogue_run, tmp_path):
    import shutil

    run = shutil.copytree(catalogue_run, tmp_path / "same")
    done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "compare", str(run), str(run)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "run A and run B are the same run" in done.stdout and "spread over" not in done.stdout


def test_report_renderers_escape_names_and_show_the_comparison(catalogue_run, runs_b, tmp_path):
    import importlib
    import shutil

    report = importlib.import_module("rca_gpu.report.catalogue_sections")
    run_b = shutil.copytree(runs_b["images"], tmp_path / "b")
    compare_runs(catalogue_run, run_b, by="images")
    catalogue = load_catalogue(run_b)
    catalogue.rename(0, "<script>x</script>")
    catalogue.merge([1, 2])
    catalogue.save()
    folder = open_run(run_b)
    html = report.comparison_section(folder).text()
    assert "vanished" in html and "new" in html and open_run(catalogue_run).run_id in html
    from rca_gpu.report.build import build_report

    page = build_report(run_b).path.read_text()
    causes = page[page.index('id="summary-causes"'):]
    causes = causes[:causes.index("</table>")]  # the summary's table of the edited causes
    assert "&lt;script&gt;x" in causes and "<script>x" not in page and "merge of 1, 2" in causes
    facts = report.cause_facts(folder)
    assert facts[0].startswith("cause 0 \u201c<script>") and "merge of 1, 2" in facts[1]  # plain text
    catalogue = load_catalogue(run_b)
    parts = catalogue.split(0, 2)
    catalogue.save()
    split_facts = report.cause_facts(open_run(run_b))[0]  # a split cluster names every part
    assert all(f"cause {p}" in split_facts for p in parts) and split_facts.count("split of 0") == 2
    assert split_facts.count(" images)") == 2
    assert report.stability_facts(open_run(catalogue_run))[0].endswith("(stable, 4 resamples)")


def test_the_report_shows_stability_causes_and_the_comparison(catalogue_run, runs_b, tmp_path):
    import shutil

    from rca_gpu.report.build import build_report

    run_b = shutil.copytree(runs_b["images"], tmp_path / "b")
    compare_runs(catalogue_run, run_b, by="images")
    catalogue = load_catalogue(run_b)
    catalogue.rename(0, "bar <at> the top")
    catalogue.save()
    page = build_report(run_b).path.read_text()
    assert "Comparison with an earlier run" in page and "vanished" in page
    assert 'id="summary-causes"' in page and "bar &lt;at&gt; the top" in page and "bar <at>" not in page
    assert "stability: " not in page  # run B was made with --stability 0
    page_a = build_report(shutil.copytree(catalogue_run, tmp_path / "a")).path.read_text()
    assert "stability: 1.00 (stable, 4 resamples)" in page_a


@pytest.fixture(scope="module")
def runs_other_size(catalogue_images, tmp_path_factory):
    """Runs holding fewer images than A (90): ``smaller``, 10 new files of each of A's groups 0-2 (30 images, no
    file in common with A); ``skewed``, A's own files of group 0 (30) and 5 of group 1 (35 images)."""
    root = catalogue_images
    out = tmp_path_factory.mktemp("runs_other_size")
    images, labels = pattern_images(n_per=10, groups=4, size=16, seed=3)
    keep = labels < 3
    small = write_pngs(out / "small_images", images[keep], labels[keep])
    skewed = sorted((root / "run").glob("g0_*.png")) + sorted((root / "run").glob("g1_*.png"))[:5]
    return {"smaller": _run_b(out / "small_images", small, out / "smaller"),
            "skewed": _run_b(root, skewed, out / "skewed")}


def test_runs_of_different_sizes_are_compared_by_shares(catalogue_run, runs_other_size):
    run_b = runs_other_size["smaller"]
    result = compare_runs(catalogue_run, run_b, by="assign", device="cpu", workers=0, write=False)
    info, table = result.info, result.table
    assert info["basis"] == "shares" and (info["images_a"], info["images_b"]) == (90, 30)
    assert _statuses(result, catalogue_run, run_b) == {"a0": "persists", "a1": "persists", "a2": "persists"}
    assert (table["share_a"] == 30 / 90).all() and (table["share_b"] == table["size_b"] / 30).all()
    # by counts the same images read as three causes that shrank: 10 (or fewer) of 30 each
    counts = compare_runs(catalogue_run, run_b, by="assign", basis="counts", device="cpu", workers=0, write=False)
    assert counts.info["basis"] == "counts" and set(counts.table["status"]) == {"shrank"}


def test_a_cause_grows_or_shrinks_by_its_share_of_the_run(catalogue_run, runs_other_size):
    run_b = runs_other_size["skewed"]
    shares = compare_runs(catalogue_run, run_b, by="images", write=False)  # B: 30 of group 0, 5 of group 1
    assert _statuses(shares, catalogue_run, run_b) == {"a0": "grew", "a1": "shrank", "a2": "vanished"}
    assert shares.info["statuses"] == {"persists": 0, "grew": 1, "shrank": 1, "vanished": 1, "new": 0}
    counts = compare_runs(catalogue_run, run_b, by="images", basis="counts", write=False)
    assert _statuses(counts, catalogue_run, run_b) == {"a0": "persists", "a1": "shrank", "a2": "vanished"}
    with pytest.raises(CatalogueError, match="--basis option must be one of auto, counts, shares"):
        compare_runs(catalogue_run, run_b, basis="ratio", write=False)


def test_compare_command_says_which_basis_it_used(catalogue_run, runs_other_size, tmp_path):
    import os
    import shutil

    run_b = shutil.copytree(runs_other_size["skewed"], tmp_path / "b")
    done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "compare", str(catalogue_run), str(run_b), "--by",
                           "images"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "status by shares of each run's images (A 90, B 35)" in " ".join(done.stdout.split())
    assert "share A" in done.stdout and "85.7%" in done.stdout and "33.3%" in done.stdout
    assert "1 grew" in done.stdout
    from rich.console import Console

    from rca_gpu.commands.compare import print_comparison

    result = compare_runs(catalogue_run, run_b, by="images", write=False)
    narrow = Console(width=80, record=True)
    print_comparison(result, narrow)
    text = narrow.export_text()
    assert max(map(len, text.splitlines())) <= 80 and "\u2026" not in text
    assert "30 (85.7%)" in text and "30 (33.3%)" in text and "grew" in text
    assert "name (A; new: B)" in text  # says whose name it shows, as the wide table's "name A" / "name B"
    written = open_run(run_b).json("comparison.json")
    assert written["basis"] == "shares" and written["images_a"] == 90 and written["images_b"] == 35
    from rca_gpu.report.catalogue_sections import comparison_section

    html = comparison_section(open_run(run_b)).text()
    assert "shares of each run&#39;s images" in html or "shares of each run's images" in html
    assert "30 (85.7%)" in html


# --- a comparison made before later edits of either catalogue says so ---

def test_a_comparison_made_before_later_edits_is_marked_out_of_date(catalogue_run, runs_b, tmp_path):
    import importlib
    import shutil

    from rca_gpu.catalogue.compare import stale_note

    report = importlib.import_module("rca_gpu.report.catalogue_sections")
    run_a = shutil.copytree(catalogue_run, tmp_path / "a")
    run_b = shutil.copytree(runs_b["images"], tmp_path / "b")
    result = compare_runs(run_a, run_b, by="images")
    recorded = result.info["catalogues"]
    assert recorded["a"]["edits"] == recorded["b"]["edits"] == 0
    assert stale_note(open_run(run_b)) is None
    assert "Out of date" not in report.comparison_section(open_run(run_b)).text()

    catalogue = load_catalogue(run_b)  # B edited after the comparison
    catalogue.merge([0, 1])
    catalogue.rename(0, "MERGED")
    catalogue.save()
    note = stale_note(open_run(run_b))
    assert "run B (this run)" in note and "run A" not in note
    assert f"rca-gpu compare {run_a.resolve()} {run_b.resolve()}" in note
    html = report.comparison_section(open_run(run_b)).text()
    assert "Out of date" in html and "rca-gpu compare" in html

    compare_runs(run_a, run_b, by="images")  # compared again: current
    assert stale_note(open_run(run_b)) is None
    path = run_a / "causes.toml"  # A edited by hand after the comparison
    catalogue = load_catalogue(run_a)
    catalogue.rename(2, "bottom bar")
    catalogue.save()
    compare_runs(run_a, run_b, by="images")
    path.write_text(path.read_text().replace('"bottom bar"', '"lower bar"'))
    note = stale_note(open_run(run_b))
    assert note.startswith("Made before later edits of the catalogue of run A") and "run B" not in note

    shutil.rmtree(run_a)  # A can no longer be read: said so, not taken as current
    assert "cannot be read now" in stale_note(open_run(run_b))


def test_b_causes_spread_every_row_over_b_s_causes_noise_included(catalogue_run, runs_b, tmp_path):
    import shutil

    run_b = shutil.copytree(runs_b["images"], tmp_path / "b")
    catalogue = load_catalogue(run_b)
    catalogue.drop(0)
    catalogue.save()
    table = compare_runs(catalogue_run, run_b, by="images", write=False).table

    def total(text):
        return sum(int(part.rsplit("(", 1)[1].rstrip(")")) for part in text.split(", ") if part)

    for row in table.itertuples():
        assert total(row.b_causes) == row.size_b and total(row.a_causes) == row.size_b, row
        assert not row.b_causes.startswith("a")  # B's ids only, never A's
    assert any("dropped (" in text for text in table["b_causes"])
    new = table[table["status"] == "new"].iloc[0]
    assert new.b_causes == f"{new.cause_b} ({new.size_b})" and "none (" in new.a_causes


def test_b_causes_count_b_s_noise():
    from rca_gpu.catalogue.compare import DROPPED, spread_of

    assert spread_of(pd.Series([3, 3, -1, DROPPED, 3])) == "3 (3), dropped (1), noise (1)"
    assert spread_of(pd.Series([-1, 2]), "none") == "2 (1), none (1)"


def test_compare_says_when_none_of_b_s_images_can_be_read(catalogue_run, catalogue_images, tmp_path):
    import shutil

    from helpers import one_line_error
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((catalogue_images / "new").glob("g[01]_*.png")):
        shutil.copy(path, images)
    run_b = _run_b(images, sorted(images.glob("*.png")), tmp_path / "b")
    for path in images.glob("*.png"):  # every file of B unreadable since
        path.write_text("x")
    with pytest.raises(CatalogueError, match="None of the 24 images of run B .* can be read now .*24 x"):
        compare_runs(catalogue_run, run_b, by="assign", write=False, device="cpu", workers=0)
    line = one_line_error(CliRunner().invoke(app, ["compare", str(catalogue_run), str(run_b), "--by", "assign",
                                                   "--device", "cpu", "--workers", "0", "-q"]),
                          "can be read now", "Restore run B's images")
    assert "dims=" not in line and not (run_b / COMPARISON_FILE).exists()
