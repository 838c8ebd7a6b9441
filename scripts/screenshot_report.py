"""Screenshots of a run's report in headless Chromium, for the README and docs/report.md.

    python scripts/screenshot_report.py runs/demo/run [--out docs/report.png] [--height 2300]
                                        [--cluster-out docs/report-cluster.png] [--rebuild]

Writes the report first when the run has none (or with --rebuild), opens it, and saves:

- ``--out``: the top of the page (summary, "Maybe the same cause", the map with a lasso drawn around the most
  isolated small cluster, and the selection panel listing its images);
- ``--cluster-out`` (optional): the largest cluster's section with its first medoid opened large.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_POINTS = """() => { const gd = document.getElementById('map'), fl = gd._fullLayout;
                     const D = JSON.parse(document.getElementById('map-data').textContent);
                     const r = gd.getBoundingClientRect();
                     return D.x.map((x, i) => [r.left + fl.xaxis._offset + fl.xaxis.d2p(x),
                                               r.top + fl.yaxis._offset + fl.yaxis.d2p(D.y[i]), D.cluster[i],
                                               !!D.thumb[i]]); }"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--cluster-out", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2600)
    parser.add_argument("--rebuild", action="store_true", help="write the report again first")
    args = parser.parse_args()

    from rca_gpu.report.browser import open_report
    from rca_gpu.report.build import REPORT_FILE, build_report

    page_path = args.run_dir / REPORT_FILE
    if args.rebuild or not page_path.is_file():
        page_path = build_report(args.run_dir).path
    with open_report(page_path, width=args.width, height=args.height) as (page, log):
        if log.console_errors:
            raise SystemExit(f"the page logged errors: {log.console_errors}")
        _select_a_cluster(page)
        page.wait_for_function("[...document.querySelectorAll('#selection img')].every(i => i.complete)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": args.width, "height": args.height})
        print(f"screenshot: {args.out}")
        if args.cluster_out:
            page.set_viewport_size({"width": args.width, "height": 1100})
            section = page.locator("section.cluster").first
            section.scroll_into_view_if_needed()
            page.evaluate("document.querySelector('section.cluster').scrollIntoView()")
            section.locator("figure.tile").first.click()
            page.wait_for_selector("dialog#viewer[open]")
            page.wait_for_function("document.getElementById('viewer-image').complete")
            page.screenshot(path=str(args.cluster_out), full_page=False)
            print(f"screenshot: {args.cluster_out}")


def _select_a_cluster(page) -> None:
    """Draw a lasso around the cluster whose bounding box holds the fewest points of others (then the smallest),
    so the selection panel lists its images."""
    import numpy as np

    page.locator("#map").scroll_into_view_if_needed()
    points = page.evaluate(_POINTS)
    xy = np.array([(x, y) for x, y, _, _ in points])
    labels = np.array([c for _, _, c, _ in points])
    if not (labels >= 0).any():
        return

    def box(cluster):
        mine = xy[labels == cluster]
        low, high = mine.min(axis=0) - 8, mine.max(axis=0) + 8
        inside = np.all((xy > low) & (xy < high), axis=1)
        return int((inside & (labels != cluster)).sum()), int((labels == cluster).sum()), low, high

    target = min(np.unique(labels[labels >= 0]), key=lambda c: box(c)[:2])
    _, _, (x0, y0), (x1, y1) = box(target)
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)
    page.locator(".modebar-btn[data-val='lasso']").click()
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.wait_for_selector("#selection:not([hidden])")
    page.mouse.move(2, 2)  # away from the points: no tooltip over the picture
    page.wait_for_selector("#map-tip", state="hidden")
    page.evaluate("window.scrollTo(0, 0)")


if __name__ == "__main__":
    main()
