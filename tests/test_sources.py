"""Sources: folders, manifests, arrays; every row accounted for; clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import add_bad_files, pattern_images, write_pngs

from rca_gpu.data.loading import decode_image
from rca_gpu.data.sources import from_arrays, load_source
from rca_gpu.errors import SourceError


def test_folder_is_recursive_and_sorted(tmp_path):
    images, labels = pattern_images(n_per=2, groups=2)
    write_pngs(tmp_path / "a", images[:2], labels[:2])
    write_pngs(tmp_path / "b" / "deep", images[2:], labels[2:])
    (tmp_path / "notes.txt").write_text("ignored")
    failures = load_source(tmp_path)
    assert len(failures) == 4
    assert failures.table["folder"].tolist() == ["a", "a", "b/deep", "b/deep"]
    assert failures.ids.tolist() == [0, 1, 2, 3]


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="holds no images"):
        load_source(tmp_path)
    other = tmp_path / "file.txt"
    other.write_text("x")
    with pytest.raises(SourceError, match="neither a folder nor a manifest"):
        load_source(other)


def test_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"file": ["a.png"]}).to_csv(manifest, index=False)
    with pytest.raises(SourceError, match="has no 'path' column"):
        load_source(manifest)


def test_manifest_resolves_relative_paths_and_passes_metadata(tmp_path):
    images, labels = pattern_images(n_per=2, groups=2)
    paths = write_pngs(tmp_path / "imgs", images, labels)
    manifest = tmp_path / "m.parquet"
    frame = pd.DataFrame({
        "path": [f"imgs/{p.name}" for p in paths],
        "label": labels,
        "root_cause": ["blur", "blur", "dark", "dark"],
        "cluster": [9, 9, 9, 9],  # a reserved name: kept under input_cluster
    })
    frame.to_parquet(manifest)
    failures = load_source(manifest)
    assert failures.paths == [str(p.resolve()) for p in paths]
    assert failures.has_root_cause
    assert {"label", "root_cause", "input_cluster", "input_path"} <= set(failures.table.columns)
    assert not failures.rejected


def test_manifest_paths_cannot_escape_root(tmp_path):
    inside = tmp_path / "data"
    images, labels = pattern_images(n_per=1, groups=2)
    paths = write_pngs(inside, images, labels)
    outside = write_pngs(tmp_path / "elsewhere", images[:1], labels[:1])[0]
    manifest = inside / "m.csv"
    pd.DataFrame({"path": [paths[0].name, "../elsewhere/" + outside.name, str(outside), "missing.png", ""]}).to_csv(
        manifest, index=False)
    failures = load_source(manifest)
    assert len(failures) == 5
    assert failures.rejected[1].startswith("path escapes the image root")
    assert failures.rejected[2].startswith("path escapes the image root")
    assert failures.rejected[3] == "file not found"
    assert 4 in failures.rejected
    allowed = load_source(manifest, image_root=tmp_path)
    assert 1 not in allowed.rejected and 2 not in allowed.rejected


def test_manifest_ids_must_be_unique(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.png", "b.png"], "id": [1, 1]}).to_csv(manifest, index=False)
    with pytest.raises(SourceError, match="missing or repeated"):
        load_source(manifest)


def test_decode_reports_each_bad_file(tmp_path):
    images, labels = pattern_images(n_per=1, groups=1)
    good = write_pngs(tmp_path, images, labels)[0]
    expected = add_bad_files(tmp_path, good)
    assert decode_image(str(good), "RGB").size == (32, 32)
    for name, reason in expected.items():
        with pytest.raises(ValueError, match=reason):
            decode_image(str(tmp_path / name), "RGB")


def test_arrays_source_checks_input():
    with pytest.raises(SourceError, match="uint8 images"):
        from_arrays(np.zeros((3, 4), dtype=np.uint8))
    with pytest.raises(SourceError, match="metadata has 2 rows for 3 images"):
        from_arrays(np.zeros((3, 4, 4), dtype=np.uint8), {"label": [1, 2]})
    failures = from_arrays(np.zeros((3, 4, 4), dtype=np.uint8), {"label": [1, 2, 3]})
    assert failures.table["label"].tolist() == [1, 2, 3]


def test_the_data_modules_import_in_one_direction():
    """No import cycle inside rca_gpu.data, also through imports inside functions."""
    import ast
    from pathlib import Path

    import rca_gpu.data

    folder = Path(rca_gpu.data.__file__).parent
    modules = {f"rca_gpu.data.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
        imports[name] = found - {name}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in imports[start])

    assert [m for m in modules if reaches(m, m, set())] == []
