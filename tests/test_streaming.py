"""Bounded memory: streamed folder listing, chunked manifest path checks, streamed fingerprint, cache read-back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rca_gpu.data import listing
from rca_gpu.data.sources import IMAGE_EXTENSIONS, load_source


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _reference(folder: Path) -> tuple[list[str], list[str], dict[int, str]]:
    """What the listing must equal: every entry named like an image from sorted(rglob), as listed (a link
    keeps its own name), hidden names left out, and the reason of each entry that is not a regular file."""
    from rca_gpu.data.sources import classify_entry

    entries = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                     and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    root = folder.resolve()
    reasons = {i: classify_entry(p) for i, p in enumerate(entries) if classify_entry(p) is not None}
    return ([str(root / p.relative_to(folder)) for p in entries],
            [str(p.parent.relative_to(folder)) for p in entries], reasons)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "failures"
    _touch(root, "a/x.png", "a-b/x.png", "a.png", "A.png", "b/c/d.JPG", "b/c.png", "z.txt", ".hidden.png",
           "a/b/q.png", "é/ü.png", "a.b/c.png", "a_/c.png", "noext", "dir.png/inner.jpeg")
    outside = tmp_path / "outside"
    _touch(outside, "o.png")
    os.symlink(root / "a.png", root / "link.png")  # a link to a file is an entry under its own name
    os.symlink(outside, root / "linked_dir")  # a link to a folder is not followed
    os.symlink(root / "gone.png", root / "broken.png")  # a broken link is a rejected row
    os.mkfifo(root / "pipe.png")  # so is a named pipe
    return root


def test_listing_matches_sorted_rglob(tree, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 3)  # several Arrow chunks, merged and sorted
    failures = load_source(tree)
    paths, folders, reasons = _reference(tree)
    assert failures.table["path"].tolist() == paths
    assert failures.left_out["hidden"]["files"] == 1  # .hidden.png
    assert failures.table["folder"].tolist() == folders
    assert failures.table["id"].tolist() == list(range(len(paths)))
    assert failures.rejected == reasons
    assert {"broken symbolic link (its target does not exist)", "a named pipe (FIFO), not a file",
            "a folder named like an image, not a file"} == set(reasons.values())
    assert str(tree.resolve() / "link.png") in paths and not any("outside" in p for p in paths)


def test_listing_of_a_flat_folder_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 7)
    names = [f"img_{i:03d}.png" for i in np.random.default_rng(0).permutation(50)]
    _touch(tmp_path, *names)
    relative, special = listing.scan_entries(tmp_path, IMAGE_EXTENSIONS)
    assert relative.to_pylist() == sorted(names) and special == {}


def test_names_that_are_not_utf8_are_listed_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 2)
    raw = [b"a.png", b"b\xff.png", b"c.png", b"sub/\xfe.png"]
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"sub"))
    for name in raw:
        open(os.path.join(os.fsencode(tmp_path), name), "wb").close()
    failures = load_source(tmp_path)
    assert [os.fsencode(p) for p in failures.paths] == [os.path.join(os.fsencode(tmp_path.resolve()), n)
                                                        for n in sorted(raw, key=lambda n: n.replace(b"/", b"\0"))]
    assert all(p.encode("utf-8") for p in failures.table["path"])  # shown escaped, valid UTF-8


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
    from rca_gpu.data.properties import PROPERTY_COLUMNS

    props = rng.normal(size=(2, len(PROPERTY_COLUMNS))).astype(np.float32)
    store.write([7, 3, 11], [None, "bad a", None], ["first frame", None, None], np.stack([truth[7], truth[11]]), 4,
                props)
    store.write([5, 0, 1], [None, None, None], [None] * 3, np.stack([truth[5], truth[0], truth[1]]), 4)
    store.write([9, 10], ["bad b", "bad c"], [None, None], None, 1)
    stale = rng.normal(size=4).astype(np.float32)
    store.write([2, 4], [None, None], [None, None], np.stack([stale, truth[4]]), 4)
    store.write([2], [None], [None], truth[2][None], 4)  # a later copy of row 2 wins
    (store.folder / "part-999999.parquet").write_bytes(b"unreadable")
    positions, matrix, rejected, notes, properties = store.load()
    assert positions.tolist() == [0, 1, 2, 4, 5, 7, 11]
    np.testing.assert_array_equal(matrix, np.stack([truth[p] for p in positions.tolist()]))
    assert rejected == {3: "bad a", 9: "bad b", 10: "bad c"} and notes == {7: "first frame"}
    np.testing.assert_array_equal(properties[[5, 6]], props)  # rows 7 and 11 carry their image properties
    assert np.isnan(properties[:5]).all()  # shards written without them read back as NaN
    indexed, index_rejected = store.index()
    assert indexed.tolist() == positions.tolist() and index_rejected == rejected


def test_an_empty_or_all_rejected_cache_reads_back_as_nothing(tmp_path):
    from rca_gpu.features.extract import _ShardStore

    store = _ShardStore(tmp_path / "cache")
    positions, matrix, rejected, _, _ = store.load()
    assert positions.size == 0 and matrix is None and rejected == {}
    store.write([0, 1], ["bad", "worse"], [None, None], None, 1)
    positions, matrix, rejected, _, _ = store.load()
    assert positions.size == 0 and matrix is None and rejected == {0: "bad", 1: "worse"}


def test_rows_land_in_one_matrix_and_holes_are_squeezed_out():
    import torch

    from rca_gpu.features.extract import _Rows

    rng = np.random.default_rng(1)
    candidates = np.array([2, 3, 5, 8, 9, 11, 12])
    truth = {p: rng.normal(size=3).astype(np.float32) for p in candidates.tolist()}
    rows = _Rows(candidates, "cpu")
    rows.add(np.array([8, 2]), torch.from_numpy(np.stack([truth[8], truth[2]])), np.array([[8.0], [2.0]], np.float32))
    rows.add(np.array([12, 5, 11]), torch.from_numpy(np.stack([truth[12], truth[5], truth[11]])),
             np.array([[12.0], [5.0], [11.0]], np.float32))
    storage = rows.matrix.untyped_storage().data_ptr()
    positions, matrix, properties = rows.result()  # 3 and 9 were rejected on the way
    assert positions.tolist() == [2, 5, 8, 11, 12]
    np.testing.assert_array_equal(matrix.numpy(), np.stack([truth[p] for p in positions.tolist()]))
    assert properties[:, 0].tolist() == [2.0, 5.0, 8.0, 11.0, 12.0]
    assert matrix.untyped_storage().data_ptr() == storage  # squeezed in place, not copied
    empty = _Rows(candidates, "cpu").result()
    assert empty[1] is None and empty[0].size == 0
