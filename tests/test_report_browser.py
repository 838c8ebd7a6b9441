"""The report in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Skipped only when no Chromium is installed; ``make browser`` (part of ``make test`` and CI) installs it.
A screenshot of the page is saved under ``$RCA_GPU_TEST_ARTIFACTS`` (default: pytest's temporary folder).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import add_bad_files, pattern_images, write_pngs

from rca_gpu.report.browser import find_chromium, open_report

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed: run `make browser` "
                                "(apt-get install chromium) to run the browser tests")

HOSTILE = "<img src=x onerror=alert(1)>.png"
HOSTILE_VALUE = "<b>cam</b><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from PIL import Image

    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("report_run")
    images, labels = pattern_images(n_per=15, groups=3, seed=1)
    paths = write_pngs(root / "imgs", images, labels)
    extra, _ = pattern_images(n_per=1, groups=3, seed=99)
    Image.fromarray(extra[0]).save(root / "imgs" / HOSTILE)  # one more group-0 image, with a hostile name
    add_bad_files(root / "imgs", paths[0])
    files = sorted((root / "imgs").iterdir())
    group = ["g0" if f.name == HOSTILE else f.name[:2] for f in files]
    pd.DataFrame({
        "path": [f"imgs/{f.name}" for f in files],
        "root_cause": group,
        "camera": [HOSTILE_VALUE if g == "g1" else "A" for g in group],
        "score": np.random.default_rng(0).random(len(files)),
    }).to_csv(root / "manifest.csv", index=False)
    result = run(build_run_spec(pipeline="pixels+pca+kmeans(k=3)", device="cpu", workers=0),
                 root / "manifest.csv", root / "out")
    assert result.report is not None and result.report.is_file()
    return result


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RCA_GPU_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _coloured_pixels(png: bytes) -> np.ndarray:
    """(n, 3) RGB of the clearly coloured pixels of a screenshot (points; not the white, grey or black)."""
    from PIL import Image

    hsv = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").convert("HSV")).reshape(-1, 3)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return rgb[(hsv[:, 1] > 80) & (hsv[:, 2] > 60)]


def _point_on_screen(page, index: int) -> tuple[float, float]:
    return tuple(page.evaluate(
        """(i) => { const gd = document.getElementById('map'), fl = gd._fullLayout;
                    const D = JSON.parse(document.getElementById('map-data').textContent);
                    const r = gd.getBoundingClientRect();
                    return [r.left + fl.xaxis._offset + fl.xaxis.d2p(D.x[i]),
                            r.top + fl.yaxis._offset + fl.yaxis.d2p(D.y[i])]; }""", index))


def test_report_loads_offline_with_every_section_thumbnail_and_a_drawn_map(small_run, artifacts):
    clusters = small_run.clusters
    expected = sorted(int(c) for c in clusters.loc[clusters.status != "rejected", "cluster"].unique())
    with open_report(small_run.report) as (page, log):
        assert log.console_errors == []
        assert log.outside_file_urls() == []
        assert log.dialogs == []
        found = page.eval_on_selector_all("section.cluster", "els => els.map(e => Number(e.dataset.cluster))")
        assert sorted(found) == expected
        sizes = page.eval_on_selector_all("section.cluster h2", "els => els.map(e => e.textContent)")
        assert any("· 16 images" in text for text in sizes)  # group 0 plus the hostile-named image
        thumbs = page.eval_on_selector_all("section.cluster img", "els => els.map(e => [e.complete, e.naturalWidth])")
        assert len(thumbs) >= 3 * 8 and all(done and width > 0 for done, width in thumbs)
        assert page.locator("#map canvas").count() > 0
        page.locator("#map").scroll_into_view_if_needed()
        before = page.locator("#map").screenshot()
        assert len(_coloured_pixels(before)) > 100  # points drawn in colour, not a blank canvas
        assert page.locator("#rejected td", has_text="empty file").count() == 2  # reasons table + rows
        assert page.locator("#ground-truth #cause-table tr").count() == 1 + 3
        shot = artifacts / "report_small_run.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        page.select_option("#colour-by", "score")
        page.wait_for_selector("#map[data-ready='1']", state="attached")
        after = page.locator("#map").screenshot()
        colours_before = {tuple(c) for c in _coloured_pixels(before) // 16}
        colours_after = {tuple(c) for c in _coloured_pixels(after) // 16}
        assert len(colours_after - colours_before) > 10  # the viridis scale replaced the cluster colours
        assert log.console_errors == [] and log.dialogs == []


def test_hostile_names_are_text_and_hover_and_clicks_lead_to_clusters(small_run):
    with open_report(small_run.report) as (page, log):
        # hostile metadata, as text in the tables, never as markup
        assert page.locator("img[src='x']").count() == 0
        assert page.get_by_text(HOSTILE_VALUE, exact=False).count() >= 1
        page.select_option("#colour-by", "camera")
        page.wait_for_selector("#map[data-ready='1']", state="attached")
        legend = page.eval_on_selector_all("#map .legendtext", "els => els.map(e => e.textContent)")
        assert HOSTILE_VALUE in legend
        page.select_option("#colour-by", "cluster")
        page.wait_for_selector("#map[data-ready='1']", state="attached")

        paths = page.evaluate("JSON.parse(document.getElementById('map-data').textContent).path")
        hostile = next(i for i, p in enumerate(paths) if p.endswith(HOSTILE))
        page.locator("#map").scroll_into_view_if_needed()
        x, y = _point_on_screen(page, hostile)
        page.mouse.move(x, y)
        page.wait_for_selector("#map-tip:not([hidden])")
        tip_text = page.locator("#map-tip").text_content()
        assert HOSTILE in tip_text and "camera" in tip_text
        assert page.eval_on_selector("#map-tip img", "e => e.complete && e.naturalWidth") > 0

        cluster = int(small_run.clusters.loc[small_run.clusters.path.str.endswith(HOSTILE), "cluster"].iloc[0])
        page.mouse.click(x, y)
        page.wait_for_function(f"location.hash === '#cluster-{cluster}'")

        page.evaluate("location.hash = ''")
        page.locator("#map").scroll_into_view_if_needed()
        page.locator("#map .legendtoggle").nth(2).click()  # the legend lists clusters 0, 1, 2
        page.wait_for_function("location.hash === '#cluster-2'")
        assert log.dialogs == [] and log.console_errors == []


def test_a_clusters_link_opens_all_of_its_images(small_run):
    clusters = small_run.clusters
    cluster = int(clusters.loc[clusters.path.str.endswith(HOSTILE), "cluster"].iloc[0])
    with open_report(small_run.report) as (page, log):
        href = page.get_attribute(f"#cluster-{cluster} a.gallery", "href")
        page.goto(Path(small_run.report).parent.joinpath(href).as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => e.src)")
        assert len(images) == len(clusters.query(f"status != 'rejected' and cluster == {cluster}"))
        assert all(src.startswith("file://") for src in images)  # the original files
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.get_by_text(HOSTILE, exact=False).count() == 1  # its name, as text
        assert page.locator("img[src='x']").count() == 0
        assert log.dialogs == [] and log.console_errors == []
        assert log.outside_file_urls() == []


# --------------------------------------------------------------------------------------------------
# Naming causes: merge suggestions, enlarged images, the map's selection and filter, heatmaps, CSP
# --------------------------------------------------------------------------------------------------

HOSTILE_NAME = "<img src=x onerror=alert(3)>cause"


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """Three planted groups (a bar's place; metadata ``site`` G0-G2, and labels the DNN got wrong), clustered
    by K-means into 4: one planted group is split in two clusters, which the kNN graph joins. A cause is named
    with markup."""
    from rca_gpu.catalogue import load_catalogue
    from rca_gpu.pipeline import run
    from rca_gpu.report.build import build_report
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("split_run")
    images, labels = pattern_images(n_per=40, groups=3, seed=4)
    paths = write_pngs(root / "imgs", images, labels)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, len(paths))
    pd.DataFrame({"path": [f"imgs/{p.name}" for p in paths], "site": [f"G{g}" for g in labels],
                  "label": label, "prediction": (label + 1 + labels) % 10,
                  "confidence": rng.uniform(0.5, 1, len(paths)).round(3)}).to_csv(root / "manifest.csv", index=False)
    result = run(build_run_spec(pipeline="pixels+pca+kmeans(k=4)", device="cpu", workers=0, stability=0),
                 root / "manifest.csv", root / "out", report=False)
    clusters = result.clusters
    groups = clusters.assign(group=clusters["path"].str.extract(r"/g(\d)_")[0].astype(int))
    by_group = groups.groupby("group")["cluster"].unique()
    split = sorted(int(c) for c in next(v for v in by_group if len(v) == 2))
    catalogue = load_catalogue(root / "out")
    other = next(c for c in catalogue.active if c not in split)
    catalogue.rename(other, HOSTILE_NAME)
    catalogue.save()
    build_report(root / "out")
    return {"report": root / "out" / "report.html", "split": split, "clusters": clusters, "named": other}


def test_merge_panel_lists_the_planted_pair_that_the_knn_graph_joins(split_run):
    with open_report(split_run["report"]) as (page, log):
        rows = page.eval_on_selector_all("#suggestions-table tr[data-pair]", "els => els.map(e => e.dataset.pair)")
        assert rows and rows[0] == ",".join(map(str, split_run["split"]))
        first = page.locator("#suggestions-table tr[data-pair]").first
        cells = first.locator("td").all_text_contents()
        assert "likely" in cells[1] and float(cells[2]) > 0.9  # the same site, unlike the other clusters
        assert float(cells[4]) > 0 and "of their kNN links join them" in cells[5]  # the kNN graph joins them
        assert len(rows) == 1  # no other pair shares a cause
        command = page.locator("#merge-command").text_content()
        assert command.endswith(f"--merge {split_run['split'][0]},{split_run['split'][1]}")
        # names with markup are text, in the summary and elsewhere
        assert page.get_by_text(HOSTILE_NAME, exact=False).count() >= 1 and page.locator("img[src='x']").count() == 0
        assert log.console_errors == [] and log.outside_file_urls() == [] and log.dialogs == []


def test_clicking_a_thumbnail_opens_it_large_with_its_metadata(split_run):
    with open_report(split_run["report"]) as (page, log):
        tile = page.locator("section.cluster figure.tile").first
        caption = tile.locator(".caption").text_content()
        assert " -> " in caption and "(" in caption  # label -> prediction (confidence)
        tile.click()
        page.wait_for_selector("dialog#viewer[open]")
        page.wait_for_function("document.getElementById('viewer-image').complete")
        size = page.eval_on_selector("#viewer-image", "e => [e.naturalWidth, e.getBoundingClientRect().width]")
        assert size[0] > 0 and size[1] >= 400  # the original file, drawn large
        assert page.eval_on_selector("#viewer-image", "e => e.src").startswith("file://")
        fields = page.locator("#viewer-fields").text_content()
        assert "site" in fields and "label" in fields and "prediction" in fields
        assert page.locator("#viewer-caption").text_content() == caption
        page.keyboard.press("Escape")
        page.wait_for_selector("dialog#viewer:not([open])", state="attached")
        border = page.locator("section.cluster .borders").first.text_content()
        assert border.startswith("borders cluster ")
        assert log.console_errors == [] and log.outside_file_urls() == [] and log.dialogs == []


def test_lasso_on_the_map_lists_the_selected_ids(split_run):
    with open_report(split_run["report"]) as (page, log):
        page.locator("#map").scroll_into_view_if_needed()
        points = page.evaluate(
            """() => { const gd = document.getElementById('map'), fl = gd._fullLayout;
                       const D = JSON.parse(document.getElementById('map-data').textContent);
                       const r = gd.getBoundingClientRect();
                       return D.x.map((x, i) => [r.left + fl.xaxis._offset + fl.xaxis.d2p(x),
                                                 r.top + fl.yaxis._offset + fl.yaxis.d2p(D.y[i]), D.id[i],
                                                 D.cluster[i]]); }""")
        target = split_run["split"][0]
        mine = np.array([(x, y) for x, y, _, c in points if c == target])
        (x0, y0), (x1, y1) = mine.min(axis=0) - 6, mine.max(axis=0) + 6
        expected = sorted(i for x, y, i, _ in points if x0 < x < x1 and y0 < y < y1)
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)  # the mode bar shows on hover
        page.locator(".modebar-btn[data-val='lasso']").click()
        page.mouse.move(x0, y0)
        page.mouse.down()
        for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
            page.mouse.move(x, y, steps=8)
        page.mouse.up()
        page.wait_for_selector("#selection:not([hidden])")
        listed = page.eval_on_selector("#selection", "e => e.dataset.ids").split(",")
        assert sorted(listed) == expected and len(expected) >= 5
        assert page.locator("#selection-count").text_content().startswith(f"{len(expected)} images selected")
        assert page.get_attribute("#selection-download", "href").startswith("blob:")
        assert "--ids selection.csv" in page.locator("#selection-export").text_content()
        assert log.console_errors == [] and log.outside_file_urls() == [] and log.dialogs == []


def test_the_map_filters_by_a_column_and_colours_by_explanation(split_run):
    with open_report(split_run["report"]) as (page, log):
        page.select_option("#filter-column", "site")
        page.select_option("#filter-level", label="G1")
        page.wait_for_selector("#map[data-ready='1']", state="attached")
        total = len(split_run["clusters"])
        assert page.locator("#filter-count").text_content() == f"40 of {total} points shown"
        drawn = page.evaluate("document.getElementById('map')._fullData.reduce((n, t) => n + t.x.length, 0)")
        assert drawn == 40
        page.select_option("#colour-by", "explanation")
        page.wait_for_selector("#map[data-ready='1']", state="attached")
        legend = page.eval_on_selector_all("#map .legendtext", "els => els.map(e => e.textContent)")
        from rca_gpu.runfolder import open_run

        clusters = split_run["clusters"]
        g1 = int(clusters.loc[clusters["path"].str.contains("/g1_"), "cluster"].mode().iloc[0])
        rules = open_run(split_run["report"].parent).table("explanations.parquet").query("rank == 1 and found")
        rule = rules.set_index("cluster").loc[g1, "rule"]
        assert f"cluster {g1}: {rule}" in legend  # where the G1 cluster's own rule holds
        assert log.console_errors == [] and log.outside_file_urls() == [] and log.dialogs == []


def test_the_heatmap_overlay_is_drawn_for_a_heatmap_run(mnist_rc_small, tmp_path):
    from PIL import Image

    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    spec = build_run_spec(pipeline="gradxinput(pool=14)+pca(n_components=8)+kmeans(k=6)", device="cpu", workers=0,
                          stability=0, seed=0)
    result = run(spec, mnist_rc_small, tmp_path / "run")
    assert (tmp_path / "run" / "heatmaps.safetensors").is_file()
    with open_report(result.report) as (page, log):
        sources = page.eval_on_selector_all(".heatmaps img", "els => els.map(e => e.getAttribute('src'))")
        assert len(sources) >= 6 * 2  # medoids' overlays and a mean per cluster
        page.wait_for_function(
            "[...document.querySelectorAll('.heatmaps img')].every(i => i.complete && i.naturalWidth > 0)")
        overlay = np.asarray(Image.open(tmp_path / "run" / sources[0]).convert("RGB"), dtype=int)
        reddish = (overlay[..., 0] - overlay[..., 2] > 60).mean()
        assert reddish > 0.01  # relevance drawn in colour over the grey digit
        page.locator("section.cluster .heatmaps figure.tile").first.click()
        page.wait_for_selector("dialog#viewer[open]")
        assert page.eval_on_selector("#viewer-heat", "e => !e.hidden && e.complete && e.naturalWidth > 0")
        assert "gradient x input" in page.locator("#about").text_content()
        assert log.console_errors == [] and log.outside_file_urls() == [] and log.dialogs == []


def test_the_content_security_policy_stops_an_injected_script_and_handler(small_run, tmp_path):
    """An escaping slip that let markup from data into the page still runs nothing: the page's CSP allows its
    own two scripts (nonce) and no inline handler."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(Path(small_run.report).parent / "report_files", folder / "report_files")
    html = Path(small_run.report).read_text(encoding="utf-8")
    slip = ('<script>window.__ran = 1; alert(1)</script><img id="slip" src="x" onerror="window.__ran = 2; '
            'alert(2)"><img src="https://example.invalid/x.png">')
    (folder / "report.html").write_text(html.replace("<main>", "<main>" + slip, 1), encoding="utf-8")
    with open_report(folder / "report.html") as (page, log):
        assert page.evaluate("window.__ran === undefined") and log.dialogs == []
        assert any("Content Security Policy" in e for e in log.console_errors)
        assert "https://example.invalid/x.png" in log.blocked and log.outside_file_urls() == []
        assert page.locator("#map .legendtext").count() >= 3  # the page's own script still drew the map
    gallery = next((Path(small_run.report).parent / "report_files" / "gallery").glob("cluster-*.html"))
    import html as html_text

    assert "script-src 'none'" in html_text.unescape(gallery.read_text(encoding="utf-8"))  # galleries run no script
