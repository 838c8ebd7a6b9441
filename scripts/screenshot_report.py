"""Screenshot of a run's report in headless Chromium, for the README (docs/report.png).

    python scripts/screenshot_report.py runs/demo/run [--out docs/report.png] [--height 1700]

Writes the report first when the run has none (`rca-gpu report`), opens it, hovers the first medoid's
point on the map so the picture shows a tooltip, and saves the top of the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1700)
    args = parser.parse_args()

    from rca_gpu.report.browser import open_report
    from rca_gpu.report.build import REPORT_FILE, build_report

    page_path = args.run_dir / REPORT_FILE
    if not page_path.is_file():
        page_path = build_report(args.run_dir).path
    with open_report(page_path, width=args.width, height=args.height) as (page, log):
        if log.console_errors:
            raise SystemExit(f"the page logged errors: {log.console_errors}")
        point = page.evaluate(
            """() => { const gd = document.getElementById('map'), fl = gd._fullLayout;
                       const D = JSON.parse(document.getElementById('map-data').textContent);
                       const r = gd.getBoundingClientRect(); const i = D.thumb.findIndex(t => t);
                       return [r.left + fl.xaxis._offset + fl.xaxis.d2p(D.x[i]),
                               r.top + fl.yaxis._offset + fl.yaxis.d2p(D.y[i])]; }""")
        page.mouse.move(*point)
        page.wait_for_selector("#map-tip:not([hidden])")
        page.wait_for_function("() => { const i = document.querySelector('#map-tip img'); return !i || i.complete; }")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": args.width, "height": args.height})
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
