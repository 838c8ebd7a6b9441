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
