"""Bounded memory: streamed folder listing, chunked manifest path checks, streamed fingerprint, cache read-back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rca_gpu.data import listing
from rca_gpu.data.sources import IMAGE_EXTENSIONS, load_source


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _rglob_reference(folder: Path) -> list[Path]:
    """What the listing must equal: sorted Path objects of rglob, as the folder source always listed."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "failures"
    _touch(root, "a/x.png", "a-b/x.png", "a.png", "A.png", "b/c/d.JPG", "b/c.png", "z.txt", ".hidden.png",
           "a/b/q.png", "é/ü.png", "a.b/c.png", "a_/c.png", "noext", "dir.png/inner.jpeg")
    outside = tmp_path / "outside"
    _touch(outside, "o.png")
    os.symlink(root / "a.png", root / "link.png")  # a link to a file counts, resolved
    os.symlink(outside, root / "linked_dir")  # a link to a folder is not followed
    return root


def test_listing_matches_sorted_rglob(tree, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 3)  # several Arrow chunks, merged and sorted
    failures = load_source(tree)
    reference = _rglob_reference(tree)
    assert failures.table["path"].tolist() == [str(p.resolve()) for p in reference]
    assert failures.table["folder"].tolist() == [str(p.parent.relative_to(tree)) for p in reference]
    assert failures.table["id"].tolist() == list(range(len(reference)))
    assert str(tree / "a.png") in failures.table["path"].tolist()
    assert not any("outside" in p for p in failures.table["path"])


def test_listing_of_a_flat_folder_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 7)
    names = [f"img_{i:03d}.png" for i in np.random.default_rng(0).permutation(50)]
    _touch(tmp_path, *names)
    relative, links = listing.scan_files(tmp_path, IMAGE_EXTENSIONS)
    assert relative.to_pylist() == sorted(names) and links == set()


def test_manifest_paths_are_checked_like_path_resolve(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 4)
    base, outside = tmp_path / "data", tmp_path / "elsewhere"
    _touch(base, "imgs/a.png", "imgs/b.PNG", "imgs/c.txt", "imgs/sub/d.jpg", "imgs/name.")
    (base / "imgs" / "dir.png").mkdir()
    _touch(outside, "o.png")
    os.symlink(outside / "o.png", base / "imgs" / "link_out.png")
    os.symlink(base / "imgs" / "a.png", base / "imgs" / "link_in.png")
    os.symlink(base / "imgs" / "sub", base / "imgs" / "sublink")
    rows = {
        "imgs/a.png": None,
        "imgs/b.PNG": None,
        "imgs/c.txt": "not an image file extension (.txt)",
        "imgs/sub/d.jpg": None,
        "imgs/name.": "not an image file extension (none)",
        "imgs/dir.png": "file not found",
        "imgs/missing.png": "file not found",
        "imgs/link_out.png": "escapes",
        "imgs/link_in.png": None,
        "imgs/sublink/d.jpg": None,
        "imgs/sublink/../a.png": None,
        "../elsewhere/o.png": "escapes",
        str(base / "imgs" / "a.png"): None,
        "": "empty path in manifest",
    }
    resolved, rejected = listing.check_manifest_paths(pd.Series(list(rows), dtype=object), base, base,
                                                      IMAGE_EXTENSIONS)
    for position, (raw, reason) in enumerate(rows.items()):
        expected = str((base / raw).resolve()) if raw else ""
        assert resolved[position] == expected, raw
        if reason is None:
            assert position not in rejected, (raw, rejected.get(position))
        else:
            assert reason in rejected[position], (raw, rejected.get(position))
    assert resolved[list(rows).index("imgs/link_in.png")] == str(base / "imgs" / "a.png")


def test_fingerprint_follows_the_files(tmp_path):
    _touch(tmp_path / "imgs", "a.png", "b.png")
    first = load_source(tmp_path).fingerprint()
    assert first == load_source(tmp_path).fingerprint()
    (tmp_path / "imgs" / "b.png").write_bytes(b"changed")
    assert load_source(tmp_path).fingerprint() != first


# --- the shard cache read back -----------------------------------------------------------------------------


def test_shards_read_back_into_one_matrix_in_position_order(tmp_path):
    from rca_gpu.features.extract import _ShardStore

    store = _ShardStore(tmp_path / "cache")
    rng = np.random.default_rng(0)
    truth = {p: rng.normal(size=4).astype(np.float32) for p in range(12)}
    # shards in any order, a rejected row in each, an all-rejected shard of another width, a position twice
    store.write([7, 3, 11], [None, "bad a", None], np.stack([truth[7], truth[11]]), 4)
    store.write([5, 0, 1], [None, None, None], np.stack([truth[5], truth[0], truth[1]]), 4)
    store.write([9, 10], ["bad b", "bad c"], None, 1)
    stale = rng.normal(size=4).astype(np.float32)
    store.write([2, 4], [None, None], np.stack([stale, truth[4]]), 4)
    store.write([2], [None], truth[2][None], 4)  # a later copy of row 2 wins
    (store.folder / "part-999999.parquet").write_bytes(b"unreadable")
    positions, matrix, rejected = store.load()
    assert positions.tolist() == [0, 1, 2, 4, 5, 7, 11]
    np.testing.assert_array_equal(matrix, np.stack([truth[p] for p in positions.tolist()]))
    assert rejected == {3: "bad a", 9: "bad b", 10: "bad c"}
    indexed, index_rejected = store.index()
    assert indexed.tolist() == positions.tolist() and index_rejected == rejected


def test_an_empty_or_all_rejected_cache_reads_back_as_nothing(tmp_path):
    from rca_gpu.features.extract import _ShardStore

    store = _ShardStore(tmp_path / "cache")
    positions, matrix, rejected = store.load()
    assert positions.size == 0 and matrix is None and rejected == {}
    store.write([0, 1], ["bad", "worse"], None, 1)
    positions, matrix, rejected = store.load()
    assert positions.size == 0 and matrix is None and rejected == {0: "bad", 1: "worse"}
