"""Gallery pages: every image of each cluster (then the noise, then the rejected images), :data:`GALLERY_PAGE` per
page, under ``report_files/gallery/``. A cluster's images come nearest to its medoid first
(:mod:`rca_gpu.report.representatives`); each caption says ``label -> prediction (confidence)`` when the run has
those columns. The pages link the original files through ``file://`` URLs and run no script.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from rca_gpu import outputs
from rca_gpu.report.page import content_security_policy, environment, file_url
from rca_gpu.report.representatives import anchor, caption, caption_columns
from rca_gpu.runfiles import json_object

#: Images per gallery page (the "open all images" link of a cluster).
GALLERY_PAGE = 500
#: Version of the gallery pages; pages of another version are written again.
GALLERY_FORMAT = 3


def write_galleries(folder: Path, clusters: pd.DataFrame, thumbs: dict[int, str], run_id: str,
                    orders: dict[int, list[int]]) -> None:
    """Write the gallery pages of a run into ``folder``.

    ``clusters``: clusters.parquet (text ``path`` and ``reason``); ``thumbs``: row position -> thumbnail file;
    ``orders``: cluster (-1 noise) -> the row positions of its images in gallery order, every cluster of the
    run listed. Pages depend only on these, so a later report of the same run keeps them.

    Raises
    ------
    OSError
        ``folder`` is a symbolic link.
    """
    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; refusing to write through it.")
    digest = hashlib.sha256(json.dumps({str(k): v for k, v in sorted(orders.items())}).encode()).hexdigest()
    stamp = {"run_id": run_id, "thumbnails": sorted(thumbs)[:1] + [len(thumbs)], "page": GALLERY_PAGE,
             "format": GALLERY_FORMAT, "orders": digest}
    index = folder / "index.json"
    if json_object(index) == stamp:
        return
    if folder.exists():
        for old in folder.glob("*.html"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    template = environment().get_template("gallery.html")
    captions = caption_columns(list(clusters.columns))
    groups = [(anchor(label), f"Cluster {label}" if label >= 0 else "Noise", rows) for label, rows in orders.items()]
    groups.append(("rejected", "Rejected images", clusters.index[clusters["status"] == "rejected"].tolist()))
    for name, title, rows in groups:
        pages = max(1, math.ceil(len(rows) / GALLERY_PAGE))
        for page in range(pages):
            items = []
            for position in rows[page * GALLERY_PAGE:(page + 1) * GALLERY_PAGE]:
                row = clusters.iloc[position]
                path, thumb = str(row["path"]), thumbs.get(int(position))
                url = None if name == "rejected" else file_url(path)
                items.append({"id": str(row["id"]), "path": path, "reason": str(row["reason"]),
                              "caption": caption(row, captions),
                              "src": url or (f"../thumbs/{thumb}" if thumb else None)})
            html = template.render(
                csp=content_security_policy(None), title=title, run_id=run_id, items=items, page=page + 1,
                pages=pages, total=len(rows), rejected=name == "rejected",
                prev=f"{name}-p{page:03d}.html" if page > 0 else None,
                next=f"{name}-p{page + 2:03d}.html" if page + 1 < pages else None,
            )
            outputs.write_text(folder / f"{name}-p{page + 1:03d}.html", html)
    outputs.write_json(index, stamp)
