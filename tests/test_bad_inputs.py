"""A catalogue of unusual inputs, each with its expected outcome.

Every case ends in one of two ways: the input's row is accounted for in clusters.parquet (clustered, noise, or
rejected with its reason), or the command prints one line ``error: ...`` naming the problem and the fix and
exits 2 before any work (no feature cache, no outputs). docs/bad-inputs.md is the readable version of this table.

The families: image files in a folder, decoding fidelity, manifests, manifest security, pipeline strings,
options, config files, output folders, interruptions, models, terminal output. Kept fast: 8-16 px images,
raw-pixel features, small n.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import one_line_error, succeeded
from PIL import Image
from typer.testing import CliRunner

from rca_gpu.cli import app

runner = CliRunner()
PIXELS = "pixels(image_size=8)+pca(n_components=2)+kmeans(k=2)"
QUICK = ["--device", "cpu", "--workers", "0", "--quiet"]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _digit(size: int = 16) -> np.ndarray:
    """A bright stroke with a grey halo on black, as an anti-aliased digit looks (0, 96 and 255)."""
    image = np.zeros((size, size), dtype=np.uint8)
    image[size // 4 - 1 : 3 * size // 4 + 1, size // 2 - 2 : size // 2 + 2] = 96
    image[size // 4 : 3 * size // 4, size // 2 - 1 : size // 2 + 1] = 255
    return image


def _good_images(folder: Path, n: int, size: int = 16) -> list[Path]:
    """n small greyscale PNGs in two visible groups (a bar at the top or at the bottom)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image = rng.integers(0, 40, size=(size, size)).astype(np.uint8)
        rows = slice(0, size // 2) if i % 2 else slice(size // 2, size)
        image[rows, :] = 220
        path = folder / f"good_{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _no_work_done(out: Path) -> None:
    """Nothing was extracted or written: no cache, no clusters."""
    assert not (out / "cache").exists()
    assert not (out / "clusters.parquet").exists()


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height and which holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))


def _save(path: Path, image: Image.Image, **kwargs) -> None:
    image.save(path, **kwargs)


def _exif_rotated(path: Path) -> None:
    """A 16 x 8 JPEG (wide) whose EXIF orientation 6 says: show it turned 90 degrees (8 x 16, tall)."""
    image = Image.fromarray(np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (8, 1))).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


def _i16b(array: np.ndarray) -> Image.Image:
    """A big-endian 16-bit grey image (mode I;16B)."""
    return Image.frombytes("I;16B", array.shape[::-1], array.astype(">u2").tobytes())


# --------------------------------------------------------------------------------------------------
# Family 1: image files in a folder. One run over a folder of odd entries; each is a row of the output.
# --------------------------------------------------------------------------------------------------

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # a name whose bytes are Latin-1, not UTF-8


def _unix_socket(path: Path) -> None:
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the file stays after the socket is closed
    server.close()


def _multipage(path: Path) -> None:
    pages = [Image.fromarray(_digit()), Image.fromarray(255 - _digit())]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _animated(path: Path) -> None:
    frames = [Image.fromarray(_digit()).convert("P"), Image.fromarray(255 - _digit()).convert("P")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


# (file name, how to make it in the folder, expected status: "rejected" | "usable", reason/note fragment)
FOLDER_CASES = [
    ("zero.png", lambda f, n: (f / n).write_bytes(b""), "rejected", "empty file"),
    ("text.jpg", lambda f, n: (f / n).write_text("not an image"), "rejected", "not a readable image"),
    ("truncated.png", lambda f, n: (f / n).write_bytes((f / "good_000.png").read_bytes()[:60]), "rejected",
     "truncated"),
    ("corrupt.jpg", lambda f, n: (f / n).write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20), "rejected",
     "image"),
    ("broken_link.png", lambda f, n: os.symlink("nowhere.png", f / n), "rejected", "broken symbolic link"),
    ("link_loop.png", lambda f, n: os.symlink(n, f / n), "rejected", "symbolic link loop"),
    ("fifo.png", lambda f, n: os.mkfifo(f / n), "rejected", "named pipe (FIFO)"),
    ("folder.png", lambda f, n: (f / n).mkdir(), "rejected", "a folder named like an image"),
    ("socket.png", lambda f, n: _unix_socket(f / n), "rejected", "a socket, not a file"),
    ("._resource_fork.png", lambda f, n: (f / n).write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60), "left out",
     "hidden"),  # a hidden name: left out of the scan and counted (run.json source.left_out)
    ("bomb.png", lambda f, n: _png_header_only(f / n, 30_000, 30_000), "rejected", "image too large"),
    (NON_UTF8, lambda f, n: Image.fromarray(_digit()).save(f / n), "usable", ""),
    ("new\nline.png", lambda f, n: Image.fromarray(_digit()).save(f / n), "usable", ""),
    ("ünïcödé ✓ [bold] (1).png", lambda f, n: Image.fromarray(_digit()).save(f / n), "usable", ""),
    ("UPPER.PNG", lambda f, n: Image.fromarray(_digit()).save(f / n), "usable", ""),
    ("png_named.jpg", lambda f, n: Image.fromarray(_digit()).save(f / n, format="PNG"), "usable", ""),
    ("link_to_good.png", lambda f, n: os.symlink("good_001.png", f / n), "usable", ""),
    ("grey16.png", lambda f, n: Image.fromarray(_digit().astype(np.uint16) * 257).save(f / n), "usable", ""),
    ("grey16_big_endian.tif", lambda f, n: _i16b(_digit().astype(np.uint16) * 257).save(f / n), "usable", ""),
    ("int32.tif", lambda f, n: Image.fromarray(_digit().astype(np.int32) * 1000 - 7).save(f / n), "usable", ""),
    ("float01.tif", lambda f, n: Image.fromarray(_digit().astype(np.float32) / 255).save(f / n), "usable", ""),
    ("float_nan.tif", lambda f, n: Image.fromarray(np.where(_digit() > 0, np.nan, 0.5).astype(np.float32))
     .save(f / n), "usable", ""),
    ("bilevel.png", lambda f, n: Image.fromarray(_digit() > 0).save(f / n), "usable", ""),
    ("palette_transparent.png", lambda f, n: Image.fromarray(_digit()).convert("P").save(f / n, transparency=0),
     "usable", ""),
    ("grey_alpha.png", lambda f, n: Image.merge("LA", [Image.fromarray(_digit()), Image.fromarray(_digit())])
     .save(f / n), "usable", ""),
    ("rgba.png", lambda f, n: Image.fromarray(np.dstack([_digit()] * 4)).save(f / n), "usable", ""),
    ("cmyk.jpg", lambda f, n: Image.fromarray(_digit()).convert("CMYK").save(f / n), "usable", ""),
    ("ycbcr.jpg", lambda f, n: Image.fromarray(_digit()).convert("RGB").convert("YCbCr").save(f / n), "usable",
     ""),
    ("animated.gif", lambda f, n: _animated(f / n), "usable", "first of 2 frames used"),
    ("pages.tif", lambda f, n: _multipage(f / n), "usable", "first of 2 frames used"),
    ("exif_rotated.jpg", lambda f, n: _exif_rotated(f / n), "usable", ""),
    ("one_pixel.png", lambda f, n: Image.fromarray(np.full((1, 1), 128, np.uint8)).save(f / n), "usable", ""),
    ("thin_strip.png", lambda f, n: Image.fromarray(np.full((1, 300), 30, np.uint8)).save(f / n), "usable", ""),
    ("portable.pgm", lambda f, n: Image.fromarray(_digit()).save(f / n), "usable", ""),
    ("alpha.webp", lambda f, n: Image.fromarray(np.dstack([_digit()] * 4)).save(f / n, lossless=True), "usable",
     ""),
]


@pytest.fixture(scope="module")
def odd_folder_run(tmp_path_factory):
    """A folder of 12 good images plus every entry of FOLDER_CASES (one in a sub-folder whose name is not
    UTF-8), run once: (clusters table indexed by file name, the command's output)."""
    root = tmp_path_factory.mktemp("odd")
    folder = root / "images"
    _good_images(folder, 12)
    for name, make, _, _ in FOLDER_CASES:
        make(folder, name)
    odd_sub = folder / os.fsdecode(b"sub\xff")
    _good_images(odd_sub, 1)
    out = root / "out"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", PIXELS, *QUICK[:-1]])
    succeeded(result)
    clusters = pd.read_parquet(out / "clusters.parquet")
    clusters["name"] = [Path(p).name for p in clusters["path"]]
    clusters.attrs["left_out"] = json.loads((out / "run.json").read_text())["source"]["left_out"]
    return clusters, result.output, len([c for c in FOLDER_CASES if c[2] != "left out"]) + 12 + 1


@pytest.mark.parametrize("name, make, status, fragment", FOLDER_CASES, ids=[c[0].encode("ascii", "backslashreplace")
                         .decode() for c in FOLDER_CASES])
def test_folder_entry_is_accounted_for(odd_folder_run, name, make, status, fragment):
    clusters, _, _ = odd_folder_run
    from rca_gpu.errors import escape_surrogates

    shown = escape_surrogates(name)
    rows = clusters[clusters["name"] == shown]
    if status == "left out":
        assert rows.empty and any(shown in e for e in clusters.attrs["left_out"][fragment]["examples"])
        return
    assert len(rows) == 1, f"{shown!r} is not exactly one row"
    row = rows.iloc[0]
    if status == "rejected":
        assert row["status"] == "rejected" and row["cluster"] == -1
    else:
        assert row["status"] in ("clustered", "noise"), row["reason"]
    assert fragment in row["reason"]
    if not fragment:
        assert row["reason"] == ""


def test_folder_rows_in_equal_rows_out(odd_folder_run):
    clusters, output, expected = odd_folder_run
    assert len(clusters) == expected and clusters["id"].is_unique
    assert f"of {expected} images" in output


def test_non_utf8_names_are_written_escaped_and_printed(odd_folder_run):
    clusters, output, _ = odd_folder_run
    assert any(p.endswith("caf\\xe9.png") for p in clusters["path"])
    # beside the text, the exact bytes (rca_gpu.data.paths): they name the file again; null for UTF-8 names
    named = {Path(p).name: raw for p, raw in zip(clusters["path"], clusters["path_bytes"], strict=True)}
    assert named["caf\\xe9.png"].endswith(b"caf\xe9.png") and os.path.isfile(os.fsdecode(named["caf\\xe9.png"]))
    assert named["UPPER.PNG"] is None
    assert "sub\\xff" in set(clusters["folder"])
    assert "sub\\xff" in output  # the summary table shows the folder column literally


# --------------------------------------------------------------------------------------------------
# Family 2: decoding fidelity. What each Pillow mode decodes to, checked pixel by pixel.
# --------------------------------------------------------------------------------------------------


def _decode(path: Path, mode: str = "L") -> np.ndarray:
    from rca_gpu.data.loading import decode_image

    return np.asarray(decode_image(str(path), mode))


DIGIT_ON = _digit() > 0
BINARY = DIGIT_ON.astype(np.uint8) * 255


def _write(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


DECODE_CASES = [
    # (id, file name, image maker, check on the decoded 8-bit grey array)
    ("16-bit grey PNG, full range: a digit, not all white", "g16.png",
     lambda: Image.fromarray(_digit().astype(np.uint16) * 257),
     lambda a: np.array_equal(a, _digit())),
    ("16-bit grey PNG holding 8-bit values: kept as they are", "g16_small.png",
     lambda: Image.fromarray(_digit().astype(np.uint16) // 2),
     lambda a: np.array_equal(a, _digit() // 2)),
    ("16-bit big-endian grey TIFF (I;16B)", "g16b.tif",
     lambda: _i16b(_digit().astype(np.uint16) * 257),
     lambda a: np.array_equal(a, _digit())),
    ("32-bit integer TIFF with negative values: stretched over its range", "i32.tif",
     lambda: Image.fromarray(_digit().astype(np.int32) * 1000 - 100_000),
     lambda a: a.min() == 0 and a.max() == 255 and np.array_equal(a > 127, _digit() > 127)),
    ("float TIFF in [0, 1]: grey levels kept, not {0, 1}", "f01.tif",
     lambda: Image.fromarray(np.where(DIGIT_ON, 0.75, 0.25).astype(np.float32)),
     lambda a: set(np.unique(a).tolist()) == {64, 191}),
    ("float TIFF in [0, 255]", "f255.tif",
     lambda: Image.fromarray(_digit().astype(np.float32)),
     lambda a: np.array_equal(a, _digit())),
    ("float TIFF in [-1, 1]: stretched", "fpm1.tif",
     lambda: Image.fromarray(np.where(DIGIT_ON, 1.0, -1.0).astype(np.float32)),
     lambda a: np.array_equal(a, BINARY)),
    ("float TIFF with NaN: NaN as the low end", "fnan.tif",
     lambda: Image.fromarray(np.where(DIGIT_ON, 1.0, np.nan).astype(np.float32)),
     lambda a: np.array_equal(a, BINARY)),
    ("1-bit PNG", "b.png", lambda: Image.fromarray(DIGIT_ON), lambda a: np.array_equal(a, BINARY)),
    ("palette PNG with a transparent colour: light content composited on black", "pt.png",
     lambda: Image.fromarray(_digit()).convert("P"),  # a grey palette; colour 0 (the black ground) transparent
     lambda a: np.array_equal(a, _digit())),
    ("grey + alpha, half transparent black: mid grey", "la.png",
     lambda: Image.merge("LA", [Image.fromarray(np.zeros((16, 16), np.uint8)),
                                Image.fromarray(np.full((16, 16), 128, np.uint8))]),
     lambda a: (np.abs(a.astype(int) - 127) <= 1).all()),
    ("RGBA fully transparent: white", "rgba0.png",
     lambda: Image.fromarray(np.zeros((16, 16, 4), np.uint8)),
     lambda a: (a == 255).all()),
    ("CMYK JPEG", "cmyk.jpg", lambda: Image.fromarray(_digit()).convert("CMYK"),
     lambda a: np.abs(a.astype(int) - _digit()).mean() < 20),
    ("YCbCr", "ycc.jpg", lambda: Image.fromarray(_digit()).convert("RGB").convert("YCbCr"),
     lambda a: np.abs(a.astype(int) - _digit()).mean() < 20),
]


@pytest.mark.parametrize("case, name, make, check", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decoded_pixels_mean_what_the_file_means(tmp_path, case, name, make, check):
    image = make()
    kwargs = {"transparency": 0} if name == "pt.png" else {}
    path = _write(tmp_path, name, image, **kwargs)
    decoded = _decode(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (16, 16)
    assert check(decoded), decoded


def test_exif_orientation_is_applied(tmp_path):
    _exif_rotated(tmp_path / "r.jpg")
    decoded = _decode(tmp_path / "r.jpg")
    assert decoded.shape == (16, 8)  # stored 8 rows x 16 columns, shown turned: 16 rows x 8 columns
    assert decoded[0, 0] < 40 and decoded[-1, 0] > 200  # the dark end of the gradient is now at the top


def test_first_frame_is_used_and_noted(tmp_path):
    from rca_gpu.data.loading import decode_image_noted

    _multipage(tmp_path / "p.tif")
    image, note = decode_image_noted(str(tmp_path / "p.tif"), "L")
    assert np.array_equal(np.asarray(image), _digit()) and note == "first of 2 frames used"


# --------------------------------------------------------------------------------------------------
# Family 3: manifests. Row problems become rejected rows; problems of the file itself, one line.
# --------------------------------------------------------------------------------------------------

# (manifest 'path' value, expected status, reason fragment); the manifest lies in data/ beside good_*.png
MANIFEST_ROWS = [
    ("good_000.png", "usable", ""),
    ("./good_001.png", "usable", ""),
    ("good_001.png", "usable", ""),  # the same file twice: two rows, both accounted for
    ("with space.png", "usable", ""),
    ("missing.png", "rejected", "file not found"),
    ("../outside.png", "rejected", "path escapes the image root"),
    ("/etc/hostname", "rejected", "path escapes the image root"),
    ("", "rejected", "empty path in manifest"),
    ("sub.png", "rejected", "a folder named like an image"),
    ("fifo.png", "rejected", "named pipe (FIFO)"),
    ("notes.txt", "rejected", "not an image file extension (.txt)"),
    ("loop.png", "rejected", "symbolic link loop"),
    ("dangling.png", "rejected", "broken symbolic link"),
    ("zero.png", "rejected", "empty file"),
]


@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory):
    """One manifest holding every row of MANIFEST_ROWS, odd metadata column names and an odd root cause."""
    root = tmp_path_factory.mktemp("manifest")
    data = root / "data"
    _good_images(data, 10)
    Image.fromarray(_digit()).save(data / "with space.png")
    Image.fromarray(_digit()).save(root / "outside.png")
    (data / "sub.png").mkdir()
    os.mkfifo(data / "fifo.png")
    (data / "notes.txt").write_text("x")
    os.symlink("loop.png", data / "loop.png")
    os.symlink("gone.png", data / "dangling.png")
    (data / "zero.png").write_bytes(b"")
    paths = [p for p, _, _ in MANIFEST_ROWS] + [f"good_{i:03d}.png" for i in range(2, 10)]
    n = len(paths)
    frame = pd.DataFrame({
        "path": paths,
        # names rca_gpu writes itself, kept under the documented rule (prefix input_ until free)
        "cluster": ["c"] * n, "input_cluster": ["ic"] * n, "status": ["s"] * n, "reason": ["r"] * n,
        "input_path": ["ip"] * n, "folder": ["f"] * n,
        "[bold]markup": ["[red]x"] * n,
        "root_cause": ["occlusion [/]"] * (n // 2) + ["dark [b]"] * (n - n // 2),
    })
    manifest = data / "manifest.csv"
    frame.to_csv(manifest, index=False)
    out = root / "out"
    result = runner.invoke(app, ["run", str(manifest), "--out", str(out), "-p", PIXELS, *QUICK[:-1]])
    succeeded(result)
    return pd.read_parquet(out / "clusters.parquet"), result.output, n


@pytest.mark.parametrize("position, value, status, fragment", [(i, *row) for i, row in enumerate(MANIFEST_ROWS)],
                         ids=[r[0] or "<empty>" for r in MANIFEST_ROWS])
def test_manifest_row_is_accounted_for(manifest_run, position, value, status, fragment):
    clusters, _, _ = manifest_run
    row = clusters.iloc[position]
    assert row["input_path"] == value
    if status == "rejected":
        assert row["status"] == "rejected" and fragment in row["reason"], row["reason"]
    else:
        assert row["status"] in ("clustered", "noise") and row["reason"] == ""


def test_manifest_rows_in_equal_rows_out(manifest_run):
    clusters, output, n = manifest_run
    assert len(clusters) == n and f"of {n} images" in output


@pytest.mark.parametrize("column, kept_as, value", [
    ("cluster", "input_cluster", "c"),
    ("input_cluster", "input_input_cluster", "ic"),
    ("status", "input_status", "s"),
    ("reason", "input_reason", "r"),
    ("input_path", "input_input_path", "ip"),
    ("folder", "input_folder", "f"),
    ("[bold]markup", "[bold]markup", "[red]x"),
])
def test_manifest_columns_named_like_outputs_are_kept(manifest_run, column, kept_as, value):
    clusters, _, _ = manifest_run
    assert (clusters[kept_as] == value).all(), column
    assert list(clusters.columns[:5]) == ["id", "path", "cluster", "status", "reason"]


def test_rich_markup_in_data_is_printed_literally(manifest_run):
    _, output, _ = manifest_run
    assert "occlusion [/]" in output and "dark [b]" in output


def _write_manifest(folder: Path, frame: pd.DataFrame | None, name: str = "m.parquet", *, raw: bytes | None = None,
                    metadata: dict[bytes, bytes] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / name
    if raw is not None:
        path.write_bytes(raw)
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
        pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "data"
    _good_images(folder, 20)
    return folder


MANIFEST_ERRORS = [
    ("no path column", lambda d: _write_manifest(d, pd.DataFrame({"file": ["good_000.png"]})),
     "has no 'path' column"),
    ("header only", lambda d: _write_manifest(d, pd.DataFrame({"path": []}, dtype=str), "e.csv"), "has no rows"),
    ("zero-byte CSV", lambda d: _write_manifest(d, None, "z.csv", raw=b""), "Cannot read the manifest"),
    ("no rows", lambda d: _write_manifest(d, pd.DataFrame({"path": pd.Series([], dtype=str)})), "has no rows"),
    ("repeated ids", lambda d: _write_manifest(d, pd.DataFrame({"path": ["good_000.png"] * 2, "id": [1, 1]})),
     "missing or repeated"),
    ("Latin-1 CSV", lambda d: _write_manifest(d, None, "l.csv", raw="path,label\ngood_000.png,café\n"
                                              .encode("latin-1")), "Cannot read the manifest"),
    ("corrupt Parquet", lambda d: _write_manifest(d, None, "c.parquet", raw=b"PAR1 not really"),
     "Cannot read the manifest"),
    ("not a manifest", lambda d: _write_manifest(d, None, "m.json", raw=b"{}"), "neither a folder nor a manifest"),
    ("missing source", lambda d: d / "nope.csv", "does not exist"),
]


@pytest.mark.parametrize("case, make, fragment", MANIFEST_ERRORS, ids=[c[0] for c in MANIFEST_ERRORS])
def test_manifest_problem_is_one_line_before_work(small_data, tmp_path, case, make, fragment):
    manifest = make(small_data)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(manifest), "--out", str(out), "-p", PIXELS, *QUICK])
    one_line_error(result, fragment)
    _no_work_done(out)


def test_repeated_and_non_text_column_names_are_kept(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rca_gpu.data.sources import load_source

    _good_images(tmp_path, 2)
    table = pa.Table.from_arrays([pa.array(["good_000.png", "good_001.png"]), pa.array([1, 2]), pa.array([3, 4]),
                                  pa.array(["a", "b"])], names=["path", "label", "label", "0"])
    pq.write_table(table, tmp_path / "m.parquet")
    failures = load_source(tmp_path / "m.parquet")
    assert failures.table["label"].tolist() == [1, 2] and failures.table["input_label"].tolist() == [3, 4]
    assert failures.table["0"].tolist() == ["a", "b"]


# --------------------------------------------------------------------------------------------------
# Family 4: manifest security. A manifest never names code; only a model file or a known architecture.
# --------------------------------------------------------------------------------------------------

EVIL = textwrap.dedent("""
    from pathlib import Path
    CALLED = Path(__file__).with_name("called.txt")
    def boom(*args, **kwargs):
        CALLED.write_text("called")
        raise SystemExit(0)
""")

MANIFEST_DUTS = [
    "rca_gpu.cli:main",
    "rca_gpu.cli:demo_command=dut_state.pt",
    "rca_gpu.datasets:make_dataset=dut_state.pt",
    "rca_gpu.datasets.models:mnist_cnn_typo=dut_state.pt",
    "os:system=dut_state.pt",
    "builtins:exec",
    "subprocess:run=dut_state.pt",
    "rca_test_evil:boom",
    "rca_test_evil:boom=dut_state.pt",
    "unknown_arch=dut_state.pt",
    "mnist_cnn=../outside.pt",
    "../outside.pt",
    "model.pkl",
]


@pytest.mark.parametrize("value", MANIFEST_DUTS, ids=[v or "<empty>" for v in MANIFEST_DUTS])
def test_a_manifest_naming_code_is_refused_and_nothing_runs(small_data, tmp_path, monkeypatch, value):
    import rca_gpu.cli
    import rca_gpu.datasets

    calls = []
    monkeypatch.setattr(rca_gpu.cli, "main", lambda *a, **k: calls.append("main"))
    monkeypatch.setattr(rca_gpu.cli, "demo_command", lambda *a, **k: calls.append("demo"))
    monkeypatch.setattr(rca_gpu.datasets, "make_dataset", lambda *a, **k: calls.append("make_dataset"))
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append("system"))
    (tmp_path / "rca_test_evil.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    (small_data / "dut_state.pt").write_bytes(b"not used")
    manifest = _write_manifest(small_data, pd.DataFrame({"path": ["good_000.png", "good_001.png", "good_002.png"]}),
                               f"dut_{abs(hash(value))}.parquet", metadata={b"rca_gpu.dut": value.encode()})
    out = tmp_path / "out"
    for pipeline in (PIXELS, "dut+pca+kmeans(k=2)"):
        result = runner.invoke(app, ["run", str(manifest), "--out", str(out), "-p", pipeline, *QUICK])
        one_line_error(result, "as its DNN under test", "Nothing was loaded or run")
        _no_work_done(out)
    assert calls == [] and not (tmp_path / "called.txt").exists()
    assert "rca_test_evil" not in sys.modules


def test_a_manifest_with_non_utf8_dut_metadata_is_refused(small_data, tmp_path):
    manifest = _write_manifest(small_data, pd.DataFrame({"path": ["good_000.png"]}), "bytes.parquet",
                               metadata={b"rca_gpu.dut": b"\xff\xfe:evil"})
    result = runner.invoke(app, ["run", str(manifest), "--out", str(tmp_path / "o"), "-p", PIXELS, *QUICK])
    one_line_error(result, "Nothing was loaded or run")


@pytest.mark.parametrize("value, expected", [
    ("mnist_cnn=dut_state.pt", "rca_gpu.datasets.models:mnist_cnn={base}/dut_state.pt"),
    ("rca_gpu.datasets.models:shapes_cnn=dut_state.pt", "rca_gpu.datasets.models:shapes_cnn={base}/dut_state.pt"),
    ("dut.pt", "{base}/dut.pt"),
    ("missing.pt2", None),  # named but absent: ignored with a warning; --model can supply it
])
def test_a_manifest_may_name_a_model_file_or_a_known_architecture(tmp_path, value, expected):
    from rca_gpu.data.sources import load_source

    _good_images(tmp_path, 1)
    (tmp_path / "dut_state.pt").write_bytes(b"weights")
    (tmp_path / "dut.pt").write_bytes(b"model")
    manifest = _write_manifest(tmp_path, pd.DataFrame({"path": ["good_000.png"]}),
                               metadata={b"rca_gpu.dut": value.encode()})
    dut = load_source(manifest).dut
    assert dut == (expected.format(base=tmp_path.resolve()) if expected else None)


def test_known_architectures_are_the_benchmark_factories():
    from rca_gpu.data.sources import KNOWN_ARCHITECTURES
    from rca_gpu.datasets import models

    for name, target in KNOWN_ARCHITECTURES.items():
        module, _, factory = target.partition(":")
        assert module == "rca_gpu.datasets.models" and callable(getattr(models, factory)) and factory == name


# --------------------------------------------------------------------------------------------------
# Family 5: pipeline strings. Refused with the parameter, the rule, the value and the fix, before work.
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fifty(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fifty") / "images"
    _good_images(folder, 50, size=8)
    return folder


PIPELINE_ERRORS = [
    # (pipeline, folder: 20 or 50 images, fragments of the one error line)
    ("pixels+pca+kmeans(k=1000)", 50, ["'k' parameter of clusterer 'kmeans' must be an int in [2, 49] with 50",
                                        "Got 1000"]),
    ("pixels+pca+ward(k=1000)", 50, ["'k' parameter of clusterer 'ward' must be an int in [2, 49]", "Got 1000"]),
    ("pixels+pca+dbscan(min_samples=40)", 20, ["'min_samples'", "[1, 19] with 20", "Got 40"]),
    ("pixels+pca+hdbscan(min_cluster_size=100)", 20, ["'min_cluster_size'", "[2, 20] with 20", "Got 100"]),
    ("pixels+pca(n_components=30)+kmeans", 20, ["'n_components' parameter of reducer 'pca'", "Got 30"]),
    ("pixels+umap(n_components=30)+dbscan", 20, ["'n_components' parameter of reducer 'umap'", "[1, 18] with 20"]),
    ("pixels+umap(n_neighbors=50)+dbscan", 20, ["'n_neighbors'", "[2, 19] with 20", "Got 50"]),
    ("pixels+pca+dbscan(eps=inf)", 20, ["'eps' parameter of clusterer 'dbscan' must be a finite number > 0",
                                         "Got inf", "leave it out"]),
    ("pixels+pca+dbscan(eps=nan)", 20, ["must be a finite number > 0", "Got nan"]),
    ("pixels+pca+dbscan(eps=-1)", 20, ["must be a finite number > 0", "Got -1.0"]),
    ("pixels+pca+kmeans(k=3,k=5)", 20, ["'k' of kmeans is given twice (k=3, k=5)", "Keep one"]),
    ("pixels+pca+kmeans(k=2.5)", 20, ["'k' parameter of clusterer 'kmeans' must be an int >= 2", "Got 2.5"]),
    ("pixels+pca+kmeans(k=true)", 20, ["must be an int >= 2", "Got True"]),
    ("pixels+pca+kmeans(k=)", 20, ["must be an int >= 2", "Got ''"]),
    ("pixels(image_size=6000)+pca+kmeans", 20, ["'image_size' parameter of extractor 'pixels' must be an int in "
                                                "[1, 512]", "Got 6000"]),
    ("mobilenet_v2(image_size=8)+pca+kmeans", 20, ["'image_size'", "[32, 1024]", "Got 8"]),
    ("ae(image_size=20)+pca+kmeans", 20, ["'image_size' parameter of extractor 'ae' must be an int among 16, 24"]),
    ("pixels+umap(min_dist=2)+dbscan", 20, ["'min_dist'", "in [0, 1]", "Got 2"]),
    ("pixels+pca(n_components=2+kmeans", 20, ["'(' at position 11 that is never closed"]),
    ("pixels+pca)+kmeans", 20, ["')' at position 11 that closes nothing"]),
    ("pixels+pca+kmeans((k=3))", 20, ["opens a parenthesis inside another"]),
    ("pixels+pca", 20, ["has 2 stage(s)"]),
    ("pixels+pca+kmeans+ward", 20, ["has 4 stage(s)"]),
    ("alexnet+pca+kmeans", 20, ["Unknown feature extractor 'alexnet'", "rca-gpu pipelines"]),
    ("pixels+tsne+kmeans", 20, ["Unknown reducer 'tsne'"]),
    ("pixels+pca+kmeans(clusters=3)", 20, ["has no parameter 'clusters'", "It accepts: k"]),
    ("pixels@conv1+pca+kmeans", 20, ["has no layers"]),
    ("pixels+pca+kmeans(k)", 20, ["write key=value"]),
    ("pixels+pca+dbscan(eps=1e400)", 20, ["Got inf"]),
    ("lrp+pca+kmeans", 20, ["'lrp' extractor needs the DNN under test", "--model"]),
    ("", 20, ["The pipeline is empty"]),
]


@pytest.mark.parametrize("pipeline, n, fragments", PIPELINE_ERRORS, ids=[c[0] or "<empty>" for c in PIPELINE_ERRORS])
def test_bad_pipeline_is_one_line_before_work(small_data, fifty, tmp_path, pipeline, n, fragments):
    folder = fifty if n == 50 else small_data
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", pipeline, *QUICK])
    one_line_error(result, *fragments)
    _no_work_done(out)


def test_a_value_the_user_set_is_what_runs(small_data, tmp_path):
    """min_samples=19 on 20 images runs as 19 (it used to become 5 with eps 0.5), and run.json says so."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "-p",
                                 "pixels(image_size=8)+pca(n_components=2)+dbscan(min_samples=19)", *QUICK])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert "min_samples=19" in info["resolved_pipeline"]
    assert info["tuning"]["chosen"]["cluster"]["min_samples"] == 19


def test_resolved_pipeline_records_the_umap_settings_that_ran(tmp_path):
    """On 8 images UMAP can use at most 6 components; the automatic grid's 10 is recorded as what ran."""
    from rca_gpu.data.sources import from_arrays
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    images = np.stack([np.full((8, 8), 20 * i, np.uint8) for i in range(8)])
    spec = build_run_spec(pipeline="pixels(image_size=8)+umap+kmeans(k=2)", device="cpu", workers=0)
    result = run(spec, from_arrays(images), tmp_path / "out")
    components = [t["reduce"]["n_components"] for t in result.run_info["tuning"]["trials"]]
    assert max(components) <= 6
    assert "n_components=10" not in result.run_info["resolved_pipeline"]


# --------------------------------------------------------------------------------------------------
# Family 6: options. Typer's own usage errors and rca_gpu's checks print the same one line, exit 2.
# --------------------------------------------------------------------------------------------------

OPTION_ERRORS = [
    (["--seed", "abc"], ["Invalid value for '--seed'", "--help"]),
    (["--device", "tpu"], ["Invalid value for '--device'", "'tpu'"]),
    (["--precision", "fp8"], ["Invalid value for '--precision'"]),
    (["--knn-backend", "nope"], ["Invalid value for '--knn-backend'"]),
    (["--bogus"], ["No such option: --bogus"]),
    (["--batch-size", "0"], ["'batch_size' option must be an int in [1, 4096]", "Got 0", "--batch-size"]),
    (["--batch-size", "100000"], ["'batch_size' option must be an int in [1, 4096]", "Got 100000"]),
    (["--workers", "-1"], ["'workers' option must be an int in [0, 64]", "Got -1"]),
    (["--workers", "1000"], ["'workers' option must be an int in [0, 64]"]),
    (["--seed", "-1"], ["'seed' option must be an int in [0, 4294967295]", "Got -1"]),
    (["--seed", str(2**40)], ["'seed' option must be an int in [0, 4294967295]"]),
    (["--knn-backend", "cuml"], ["--knn-backend option 'cuml' needs cuML on a CUDA GPU", "--knn-backend auto"]),
    (["--model", "missing.pt", "-p", "dut+pca+kmeans"], ["--model file", "missing.pt", "does not exist"]),
    (["--model", "pkg.mod:factory=missing.pt", "-p", "dut+pca+kmeans"], ["--model file", "missing.pt"]),
    (["--model", "{folder}", "-p", "dut+pca+kmeans"], ["is a folder, not a model file"]),
    (["--model", ""], ["'model' option must be a non-empty string"]),
    (["--image-root", "{folder}/nope"], ["--image-root folder", "does not exist"]),
    (["--config", "{folder}"], ["config file", "is a folder"]),
    (["--config", "{folder}/missing.toml"], ["config file", "does not exist"]),
    (["--weights", "", "-p", "mobilenet_v2+pca+kmeans"], ["'weights' parameter of extractor 'mobilenet_v2' must be "
                                                          "a non-empty string"]),
]


@pytest.mark.skipif(__import__("importlib").util.find_spec("cuml") is not None, reason="cuML is installed here")
@pytest.mark.parametrize("extra, fragments", OPTION_ERRORS, ids=[" ".join(c[0]) for c in OPTION_ERRORS])
def test_bad_option_is_one_line_before_work(small_data, tmp_path, extra, fragments):
    out = tmp_path / "out"
    extra = [e.format(folder=small_data) for e in extra]
    pipeline = [] if "-p" in extra else ["-p", PIXELS]
    device = [] if "--device" in extra else ["--device", "cpu"]
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), *pipeline, *extra, *device, "--quiet"])
    one_line_error(result, *fragments)
    _no_work_done(out)


@pytest.mark.parametrize("argv, fragment", [
    (["run"], "Missing option '--out'"),  # SOURCE is optional: --features FILE may replace it
    (["evaluate"], "Missing argument 'RUN_DIR'"),
    (["datasets", "make", "nope", "--out", "x"], "'nope' is not one of"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_typer_usage_errors_are_one_line(argv, fragment):
    one_line_error(runner.invoke(app, argv), fragment)


def test_usage_error_from_the_installed_entry_point_is_one_line():
    """The real entry point in a fresh process (not the test runner): one line on stderr, exit 2."""
    done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "run", ".", "--out", "x", "--seed", "abc"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: Invalid value for '--seed'")


# --------------------------------------------------------------------------------------------------
# Family 7: config files (--config). Every key and value checked; the file itself read safely.
# --------------------------------------------------------------------------------------------------

CONFIG_ERRORS = [
    ('features = "pixels"', ["config key 'features' must be a table [features]", "pipeline ="]),
    ("image_root = 5", ["'image_root' option must be a non-empty string", "Got 5"]),
    ('cache_features = "false"', ["'cache_features' option must be true or false", "without quotes: false"]),
    ('plot_embedding = "yes"', ["'plot_embedding' option must be true or false"]),
    ("seed = 1.5", ["'seed' option must be an int", "Got 1.5"]),
    ('seed = "7"', ["'seed' option must be an int", "Got '7'"]),
    ("pipeline = 5", ["pipeline must be a string"]),
    ('device = "tpu"', ["'device' option must be one of 'auto', 'cpu', 'gpu'"]),
    ("colour = 1", ["Unknown config key(s) 'colour'"]),
    ('pipeline = "pixels+pca+kmeans"\n[cluster]\nk = "3"', ["'k' parameter of clusterer 'kmeans' must be an int"]),
    ('pipeline = "pixels+pca+kmeans"\n[cluster]\nk = 3\nk = 5', ["not valid TOML", "Cannot overwrite a value"]),
    ('pipeline = "pixels+pca+kmeans"\n[reduce.inner]\nx = 1', ["reducer 'pca' has no parameter 'inner'"]),
    ('pipeline = "mobilenet_v2+pca+kmeans"\n[features]\nlayer = 5', ["layer of extractor 'mobilenet_v2' must be"]),
    ('pipeline = "pixels+pca+kmeans"\n[cluster]\nk = 1000', ["'k' parameter of clusterer 'kmeans' must be an int in "
                                                              "[2, 19] with 20"]),
    ("pipeline = [", ["not valid TOML"]),
    ("seed = 3\n\x00", ["not valid TOML"]),
]


@pytest.mark.parametrize("text, fragments", CONFIG_ERRORS, ids=[c[0].splitlines()[-1] for c in CONFIG_ERRORS])
def test_bad_config_is_one_line_before_work(small_data, tmp_path, text, fragments):
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "out"
    pipeline = [] if "pipeline" in text else ["-p", PIXELS]
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "--config", str(config), *pipeline,
                                 "--workers", "0", "--quiet"])  # no --device: the config's own must be checked
    one_line_error(result, *fragments)
    _no_work_done(out)


def test_config_with_a_latin1_byte_is_one_line(small_data, tmp_path):
    config = tmp_path / "run.toml"
    config.write_bytes('seed = 1\n# réglages\n'.encode("latin-1"))
    result = runner.invoke(app, ["run", str(small_data), "--out", str(tmp_path / "o"), "--config", str(config),
                                 *QUICK])
    one_line_error(result, "is not UTF-8 text: byte 0xe9 on line 2", "save it as UTF-8")


# --------------------------------------------------------------------------------------------------
# Family 8: output folders. Checked before work; a folder never mixes two runs.
# --------------------------------------------------------------------------------------------------

def _read_only(monkeypatch):
    """Make every write probe fail as on a read-only mount (EROFS): the tests run as root, which ignores
    permission bits, and cannot mount file systems."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _file(path: Path) -> Path:
    path.write_text("x")
    return path


OUT_ERRORS = [
    ("an existing file", lambda tmp, mp: str(_file(tmp / "f")), "is an existing file"),
    ("the empty string", lambda tmp, mp: "", "The --out option is empty"),
    ("only spaces", lambda tmp, mp: "  ", "The --out option is empty"),
    ("below a file", lambda tmp, mp: str(_file(tmp / "f") / "run"), "is a file"),
    ("not writable (sysfs)", lambda tmp, mp: "/sys/rca-gpu-out", "Cannot write into the --out folder"),
    ("on a read-only file system", lambda tmp, mp: _read_only(mp) or str(tmp / "ro"), "the file system is read-only"),
]


@pytest.mark.parametrize("case, make, fragment", OUT_ERRORS, ids=[c[0] for c in OUT_ERRORS])
def test_bad_out_folder_is_one_line_before_work(small_data, tmp_path, monkeypatch, case, make, fragment):
    if case.startswith("not writable") and (not Path("/sys").is_dir() or os.access("/sys", os.W_OK)
                                            and os.geteuid() != 0):
        pytest.skip("needs a sysfs mount that refuses new files")
    out = make(tmp_path, monkeypatch)
    result = runner.invoke(app, ["run", str(small_data), "--out", out, "-p", PIXELS, *QUICK])
    one_line_error(result, fragment)
    assert not (tmp_path / "ro").exists()


def _run_into(source: Path, out: Path, pipeline: str = PIXELS):
    return succeeded(runner.invoke(app, ["run", str(source), "--out", str(out), "-p", pipeline, *QUICK]))


@pytest.fixture(scope="module")
def caused(tmp_path_factory) -> Path:
    """A manifest with root causes (so runs write metrics.json and per_cause.csv) and one without."""
    data = tmp_path_factory.mktemp("caused") / "data"
    _good_images(data, 12)
    names = [f"good_{i:03d}.png" for i in range(12)]
    pd.DataFrame({"path": names, "root_cause": ["top" if i % 2 else "bottom" for i in range(12)]}).to_csv(
        data / "with_causes.csv", index=False)
    pd.DataFrame({"path": names}).to_csv(data / "without_causes.csv", index=False)
    return data


def test_a_rerun_leaves_no_file_of_the_earlier_run(caused, tmp_path):
    out = tmp_path / "out"
    _run_into(caused / "with_causes.csv", out)
    assert (out / "metrics.json").is_file() and (out / "per_cause.csv").is_file()
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    _run_into(caused / "without_causes.csv", out)
    assert not (out / "metrics.json").exists() and not (out / "per_cause.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"
    from rca_gpu.runfolder import open_run

    folder = open_run(out)
    folder.clusters(), folder.embedding()  # every file belongs to the new run


def test_a_run_killed_after_writing_clusters_is_not_read_as_finished(caused, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run_into(caused / "with_causes.csv", out)
    from rca_gpu import outputs

    real = outputs.write_parquet

    def die_after_clusters(path, frame, **kwargs):
        real(path, frame, **kwargs)
        if Path(path).name == "clusters.parquet":
            raise KeyboardInterrupt  # the process is stopped right after clusters.parquet is written

    monkeypatch.setattr(outputs, "write_parquet", die_after_clusters)
    result = runner.invoke(app, ["run", str(caused / "with_causes.csv"), "--out", str(out), "-p", PIXELS, *QUICK])
    assert result.exit_code == 130
    monkeypatch.undo()
    assert not (out / "run.json").exists()
    one_line_error(runner.invoke(app, ["evaluate", str(out)]), "holds no run.json, so it is not a finished run")


def test_too_few_usable_images_still_write_every_reason(tmp_path):
    folder = tmp_path / "images"
    _good_images(folder, 2)
    for i in range(3):
        (folder / f"bad_{i}.png").write_text("no")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", PIXELS, *QUICK])
    one_line_error(result, "needs at least 3 usable images; there are 2 usable images", "clusters.parquet")
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(clusters) == 5 and (clusters["status"] == "rejected").all()
    assert clusters["reason"].str.contains("not a readable image").sum() == 3
    assert clusters["reason"].str.contains("not clustered: the run stopped").sum() == 2
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "needs at least 3" in info["error"]
    one_line_error(runner.invoke(app, ["evaluate", str(out)]), "failed", "clusters.parquet lists every row")


def test_evaluate_refuses_a_folder_that_mixes_two_runs(caused, tmp_path):
    import shutil

    first, second = tmp_path / "a", tmp_path / "b"
    _run_into(caused / "with_causes.csv", first)
    _run_into(caused / "with_causes.csv", second)
    shutil.copy(second / "clusters.parquet", first / "clusters.parquet")
    one_line_error(runner.invoke(app, ["evaluate", str(first)]), "mixes files of different runs")


# --------------------------------------------------------------------------------------------------
# Family 9: interruptions. Shards bounded by rows and by time; a killed extraction resumes.
# --------------------------------------------------------------------------------------------------

SLOW_RUN = textwrap.dedent("""
    import sys, time
    import rca_gpu.features.extract as extract
    from rca_gpu.features import pixels
    extract.SHARD_SECONDS = 0.5  # the time bound (the row bound, 1,000 images, stays): a shard every ~3 batches
    encode = pixels.PixelExtractor.encode
    def slow(self, images):
        time.sleep(0.15)
        return encode(self, images)
    pixels.PixelExtractor.encode = slow
    from rca_gpu.cli import main
    sys.argv = ["rca-gpu", "run", *sys.argv[1:]]
    main()
""")


def _shard_positions(cache: Path) -> list[int]:
    import pyarrow.parquet as pq

    found = []
    for shard in sorted(cache.rglob("part-*.parquet")):
        found.extend(pq.read_table(shard, columns=["position"]).column("position").to_pylist())
    return found


def test_an_extraction_killed_with_sigkill_resumes_from_its_finished_shards(tmp_path):
    folder = tmp_path / "images"
    _good_images(folder, 200, size=8)
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), "-p", PIXELS, "--device", "cpu", "--workers", "0", "--batch-size",
            "10", "--quiet"]
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while len(list(out.glob("cache/*/part-*.parquet"))) < 3:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (out / "run.json").exists()
    before = _shard_positions(out / "cache")
    assert 60 <= len(before) < 200, "killed between shards, before the end"

    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["features"]["from_cache"] == len(before)  # the finished shards were reused
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(clusters) == 200 and clusters["id"].is_unique and (clusters["status"] != "rejected").all()
    after = _shard_positions(out / "cache")
    assert sorted(after) == list(range(200))  # no row lost, none extracted twice


def test_shards_are_bounded_by_rows_and_by_time_by_default():
    from rca_gpu.features import extract

    assert extract.SHARD_ROWS <= 1000 and extract.SHARD_SECONDS <= 60


def test_shards_are_bounded_by_time(small_data, tmp_path, monkeypatch):
    import rca_gpu.features.extract as extract

    monkeypatch.setattr(extract, "SHARD_SECONDS", 0.0)  # every batch is older than the bound
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "-p", PIXELS, "--batch-size", "5",
                                 *QUICK])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("cache/*/part-*.parquet"))) == 4  # 20 images in batches of 5


def test_a_half_written_or_corrupt_shard_is_recomputed(small_data, tmp_path):
    out = tmp_path / "out"
    _run_into(small_data, out)
    shard = next(out.glob("cache/*/part-*.parquet"))
    (shard.parent / "part-000009.tmp").write_bytes(b"half")  # a write cut short
    shard.write_bytes(b"PAR1 garbage")
    result = _run_into(small_data, out)
    info = json.loads((out / "run.json").read_text())
    assert info["counts"]["usable"] == 20 and info["features"]["from_cache"] == 0
    assert not list(out.glob("cache/*/*.tmp")) and result.exit_code == 0


# --------------------------------------------------------------------------------------------------
# Family 10: models and features. A DNN under test that outputs NaN costs only its rows.
# --------------------------------------------------------------------------------------------------

NAN_DUT = textwrap.dedent("""
    import torch
    from torch import nn

    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)  # NaN where x < 0: dark images

    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), Log(), nn.Linear(4, 2))
        with torch.no_grad():
            model[1].weight.fill_(1 / 64)
            model[1].bias.fill_(-0.5)
        model.input_shape = (1, 8, 8)
        model.classes = ["a", "b"]
        return model
""")


def test_non_finite_features_reject_only_their_rows(tmp_path, monkeypatch):
    import torch

    (tmp_path / "rca_nan_dut.py").write_text(NAN_DUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rca_nan_dut", None)
    import rca_nan_dut

    torch.save(rca_nan_dut.build().state_dict(), tmp_path / "w.pt")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 40 if i < 3 else 220, np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", "dut+pca(n_components=2)+kmeans(k=2)",
                                 "--model", f"rca_nan_dut:build={tmp_path / 'w.pt'}", *QUICK])
    succeeded(result)
    clusters = pd.read_parquet(out / "clusters.parquet")
    rejected = clusters[clusters["status"] == "rejected"]
    assert len(clusters) == 12 and len(rejected) == 3
    assert rejected["reason"].str.startswith("features not finite (NaN or inf) from dut").all()


def test_drop_nonfinite_rows_on_numpy_and_torch():
    import torch

    from rca_gpu.features.extract import drop_nonfinite_rows

    matrix = np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, np.inf], [3.0, 4.0]], dtype=np.float32)
    for data in (matrix, torch.from_numpy(matrix)):
        rejected: dict[int, str] = {}
        kept, positions = drop_nonfinite_rows(data, np.array([10, 11, 12, 13]), rejected, source="embeddings")
        assert positions.tolist() == [10, 13] and np.asarray(kept).tolist() == [[1, 2], [3, 4]]
        assert rejected == {11: "features not finite (NaN or inf) from embeddings",
                            12: "features not finite (NaN or inf) from embeddings"}


MODEL_ERRORS = [
    ("a pickled whole model", "pickled", "unpickling runs arbitrary code"),
    ("weights without the code", "state_dict", "holds only weights (a state_dict)"),
    ("a text file", "text", "is not a model file rca_gpu can read"),
]


@pytest.mark.parametrize("case, kind, fragment", MODEL_ERRORS, ids=[c[0] for c in MODEL_ERRORS])
def test_a_model_file_that_cannot_be_loaded_safely_is_one_line(small_data, tmp_path, case, kind, fragment):
    import torch

    path = tmp_path / "model.pt"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    if kind == "pickled":
        torch.save(model, path)
    elif kind == "state_dict":
        torch.save(model.state_dict(), path)
    else:
        path.write_text("hello")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "-p", "dut+pca+kmeans", "--model",
                                 str(path), *QUICK])
    one_line_error(result, fragment)


# --------------------------------------------------------------------------------------------------
# Family 11: memory bombs. A small file declaring a huge picture is decoded within the memory budget:
# reduced where the format allows, else rejected with the reason, before its pixels are decoded.
# --------------------------------------------------------------------------------------------------

MiB = 2**20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _zeros_deflated(size: int, row: int) -> bytes:
    """zlib stream of ``size`` zero bytes, compressed row by row (no buffer of ``size`` bytes)."""
    packer, out, left = zlib.compressobj(9), [], size
    block = b"\x00" * max(1, min(row, 1 << 20))
    while left > 0:
        take = min(left, len(block))
        out.append(packer.compress(block[:take]))
        left -= take
    out.append(packer.flush())
    return b"".join(out)


def _png_declaring(path: Path, width: int, height: int, *, real: bool = False, colour: bool = False) -> None:
    """An 8-bit grey (or RGB) PNG of width x height: every pixel black when ``real`` (a valid file of a few KiB
    per megapixel), else the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    row = width * (3 if colour else 1) + 1
    data = _zeros_deflated(row * height, row) if real else zlib.compress(b"\x00")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


def _tiff_declaring(path: Path, width: int, height: int, *, real: bool = False) -> None:
    """An 8-bit grey TIFF of one deflate strip: all black when ``real``, else a strip of one byte."""
    data = _zeros_deflated(width * height, width) if real else zlib.compress(b"\x00")
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    ifd_size = 2 + 12 * len(entries) + 4
    offset = 8 + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = offset if tag == 273 else value
        body += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                      else struct.pack("<I", value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + body + b"\x00\x00\x00\x00" + data)


def _webp_declaring(path: Path, width: int, height: int) -> None:
    """A lossless WebP of one colour whose header says width x height: 38 bytes that decode to the whole
    picture (the colour needs no bits per pixel), as the WebP bomb of 12,000 x 12,000 px does."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, "WEBP", lossless=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"VP8L") + 8
    bits = struct.unpack("<I", data[at + 1:at + 5])[0]
    data[at + 1:at + 5] = struct.pack("<I", (width - 1) | ((height - 1) << 14) | (bits & ~((1 << 28) - 1)))
    path.write_bytes(bytes(data))


def _gif_declaring(path: Path, width: int, height: int) -> None:
    """A GIF whose screen and first frame are width x height, with one byte of pixel data."""
    screen = struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(b"GIF89a" + screen + frame + b"\x3b")


def _jpeg_declaring(path: Path, width: int, height: int) -> None:
    """An 8 x 8 JPEG whose frame header (SOF0) says width x height."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def _bmp_declaring(path: Path, width: int, height: int) -> None:
    """A 24-bit BMP whose header says width x height, with 16 bytes of pixels."""
    pixels = b"\x00" * 16
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels)


def _pnm_declaring(path: Path, width: int, height: int) -> None:
    """A binary PGM (grey, .pgm) or PPM (RGB, other names) whose header says width x height, with 16 bytes of
    pixels."""
    magic = "P5" if path.suffix == ".pgm" else "P6"
    path.write_bytes(f"{magic}\n{width} {height}\n255\n".encode() + b"\x00" * 16)


def _jpeg_real(path: Path, width: int, height: int) -> None:
    Image.new("L", (width, height), 90).save(path, "JPEG", quality=50)


# (case, file name, maker, declared width, height): every file under 2 KiB, each decoded frame alone over
# 256 MiB (a smaller one is decoded and reduced, see REDUCED)
BOMBS = [
    ("PNG 15000 x 15000 RGB", "bomb.png", lambda p, w, h: _png_declaring(p, w, h, colour=True), 15000, 15000),
    ("PNG 19000 x 19000 grey", "grey.png", _png_declaring, 19000, 19000),
    ("PNG 100000 x 3000 (a strip)", "strip.png", _png_declaring, 100000, 3000),
    ("PNG 3000 x 100000 (a column)", "column.png", _png_declaring, 3000, 100000),
    ("WebP 12000 x 12000 (38 bytes, decodes whole)", "bomb.webp", _webp_declaring, 12000, 12000),
    ("WebP 16383 x 16383 (the largest WebP)", "largest.webp", _webp_declaring, 16383, 16383),
    ("TIFF 15000 x 15000", "bomb.tif", _tiff_declaring, 15000, 15000),
    ("TIFF 19000 x 19000 under the pixel cap", "wide.tiff", _tiff_declaring, 19000, 19000),
    ("GIF 15000 x 15000", "bomb.gif", _gif_declaring, 15000, 15000),
    ("GIF 65535 x 5000 (the widest GIF)", "widest.gif", _gif_declaring, 65535, 5000),
    ("BMP 15000 x 15000", "bomb.bmp", _bmp_declaring, 15000, 15000),
    ("BMP 15000 x -15000 (top-down)", "topdown.bmp", _bmp_declaring, 15000, -15000),
    ("PPM 15000 x 15000 RGB", "bomb.ppm", _pnm_declaring, 15000, 15000),
    ("PGM 19999 x 19999 grey", "bomb.pgm", _pnm_declaring, 19999, 19999),
]
BOMB_BUDGET = 256 * MiB


@pytest.mark.parametrize("case, name, make, width, height", BOMBS, ids=[b[0] for b in BOMBS])
def test_a_small_file_declaring_a_huge_picture_is_refused_before_decoding(tmp_path, case, name, make, width,
                                                                          height):
    from rca_gpu.data.decoding import TOO_LARGE, decode_image_noted

    path = tmp_path / name
    make(path, width, height)
    assert path.stat().st_size < 2048
    with pytest.raises(ValueError, match=f"^{TOO_LARGE}: {width} x {abs(height)} px .* the budget is 256 MiB "
                                         r"per image \(--max-image-memory\)$"):
        decode_image_noted(str(path), "RGB", BOMB_BUDGET)


def test_a_jpeg_declaring_a_huge_picture_is_decoded_at_most_at_one_eighth(tmp_path):
    """JPEG's decoder scales by 1/8 at most: 19999 x 19999 px cost 2500 x 2500 px, too much for 64 MiB."""
    from rca_gpu.data.decoding import TOO_LARGE, decode_image_noted

    _jpeg_declaring(tmp_path / "bomb.jpg", 19999, 19999)
    with pytest.raises(ValueError, match=f"^{TOO_LARGE}: 19999 x 19999 px L needs about .* the budget is 64 MiB"):
        decode_image_noted(str(tmp_path / "bomb.jpg"), "RGB", 64 * MiB)


# (case, file maker, budget, expected note) for pictures decoded reduced instead of rejected
REDUCED = [
    ("JPEG 4000 x 4000 at 1/4 by its decoder (draft)", "big.jpg", lambda p: _jpeg_real(p, 4000, 4000),
     "1/4 of each side", (1000, 1000)),
    ("JPEG 3000 x 2000 at 1/2", "wide.jpg", lambda p: _jpeg_real(p, 3000, 2000), "1/2 of each side", (1500, 1000)),
    ("PNG 3000 x 3000 reduced after decoding", "big.png", lambda p: _png_declaring(p, 3000, 3000, real=True),
     "1/2 of each side", (1500, 1500)),
    ("TIFF 3000 x 3000 reduced after decoding", "big.tif", lambda p: _tiff_declaring(p, 3000, 3000, real=True),
     "1/3 of each side", (1000, 1000)),
]


@pytest.mark.parametrize("case, name, make, fragment, size", REDUCED, ids=[r[0] for r in REDUCED])
def test_a_large_picture_is_decoded_reduced_when_the_format_allows(tmp_path, case, name, make, fragment, size):
    from rca_gpu.data.decoding import REDUCED_NOTE, decode_image_noted

    make(tmp_path / name)
    image, note = decode_image_noted(str(tmp_path / name), "RGB", 64 * MiB)
    assert note == f"{REDUCED_NOTE} ({fragment})" and image.size == size and image.mode == "RGB"
    full, note = decode_image_noted(str(tmp_path / name), "RGB", None)  # no budget: the whole picture
    assert note is None and full.size[0] > size[0]


SIZES = [("4GiB", 4 * 2**30), ("512MiB", 512 * MiB), ("1.5G", 1_500_000_000), ("2000000000", 2_000_000_000),
         (" 64 mib ", 64 * MiB), ("1TB", 10**12), ("100M", 10**8)]


@pytest.mark.parametrize("text, size", SIZES, ids=[s[0].strip() for s in SIZES])
def test_memory_sizes_are_read_with_their_unit(text, size):
    from rca_gpu.data.decoding import parse_size

    assert parse_size(text) == size


BAD_SIZES = ["abc", "0", "-1GiB", "10MiB", "63MiB", "4 GB B", "1e9", "nan", "inf", "", "4XB", "0x100000000",
             "99999999999999999999999GiB"]


@pytest.mark.parametrize("text", BAD_SIZES, ids=[t or "<empty>" for t in BAD_SIZES])
def test_a_bad_max_image_memory_is_one_line_before_work(small_data, tmp_path, text):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "-p", PIXELS, "--max-image-memory",
                                 text, *QUICK])
    one_line_error(result, "The --max-image-memory option must be a size such as 4GiB", "at least 64 MiB")
    _no_work_done(out)


CONFIG_SIZES = [('max_image_memory = "4GiB"', None), ("max_image_memory = 1073741824", None),
                ('max_image_memory = "lots"', "must be a size such as 4GiB"),
                ("max_image_memory = 5", "'max_image_memory' option must be an int in [67108864"),
                ("max_image_memory = true", "'max_image_memory' option must be an int"),
                ("max_image_memory = 1.5e9", None)]


@pytest.mark.parametrize("text, fragment", CONFIG_SIZES, ids=[c[0] for c in CONFIG_SIZES])
def test_max_image_memory_in_a_config_file(small_data, tmp_path, text, fragment):
    config = tmp_path / "run.toml"
    config.write_text(text + "\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "--config", str(config), "-p", PIXELS,
                                 *QUICK])
    if fragment is not None:
        one_line_error(result, fragment)
        _no_work_done(out)
        return
    succeeded(result)
    info = json.loads((out / "run.json").read_text())
    assert info["spec"]["max_image_memory"] == int(float(text.split("=")[1].strip().strip('"').replace("GiB", "")
                                                         or 0) * (2**30 if "GiB" in text else 1))
    assert info["features"]["max_image_memory"] == info["spec"]["max_image_memory"]


def _bomb_folder(folder: Path, good: int = 8) -> dict[str, str]:
    """``good`` small images plus a bomb of each format, real large pictures that decode reduced: name -> the
    expected start of its reason or note ("" for a plain image)."""
    from rca_gpu.data.decoding import REDUCED_NOTE, TOO_LARGE

    _good_images(folder, good)
    expected = {f"good_{i:03d}.png": "" for i in range(good)}
    for _, name, make, width, height in [b for b in BOMBS if b[1].startswith("bomb.")]:
        make(folder / name, width, height)
        expected[name] = TOO_LARGE
    _png_declaring(folder / "real_bomb.png", 12000, 12000, real=True)  # 144 Mpx of black in 140 KiB
    expected["real_bomb.png"] = REDUCED_NOTE
    _jpeg_real(folder / "large.jpg", 6000, 6000)
    expected["large.jpg"] = REDUCED_NOTE
    return expected


def test_every_bomb_of_a_folder_is_a_row_with_its_reason(tmp_path):
    folder = tmp_path / "images"
    expected = _bomb_folder(folder)
    out = tmp_path / "out"
    succeeded(runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", PIXELS, "--max-image-memory",
                                  "256MiB", *QUICK]))
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(clusters) == len(expected)
    for path, status, reason in zip(clusters["path"], clusters["status"], clusters["reason"], strict=True):
        fragment = expected[Path(path).name]
        assert reason.startswith(fragment) if fragment else reason == "", (path, reason)
        assert (status == "rejected") == fragment.startswith("image too large"), (path, status)


PEAK_RUN = textwrap.dedent("""
    import json, resource, subprocess, sys
    done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", *sys.argv[1:]], capture_output=True, text=True)
    print(json.dumps({"rc": done.returncode, "err": done.stderr[-2000:],
                      "maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
""")


def _peak_rss(tmp_path: Path, folder: Path, out: Path, *extra: str) -> int:
    """Peak resident memory (bytes) of ``rca-gpu run FOLDER`` in a process of its own."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_RUN)
    done = subprocess.run([sys.executable, str(script), "run", str(folder), "--out", str(out), "-p", PIXELS,
                           "--device", "cpu", "--workers", "0", "--quiet", "--no-report", *extra],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["err"]
    return result["maxrss"]


def test_the_peak_memory_of_a_run_on_bombs_stays_within_the_budget(tmp_path):
    """A folder of bombs (one would take 2.2 GiB to decode, another 144 Mpx of black) costs the run at most the
    budget over the same run on its good images alone."""
    plain, bombs = tmp_path / "plain", tmp_path / "bombs"
    _good_images(plain, 8)
    _bomb_folder(bombs)
    baseline = _peak_rss(tmp_path, plain, tmp_path / "out_plain")
    peak = _peak_rss(tmp_path, bombs, tmp_path / "out_bombs", "--max-image-memory", "256MiB")
    assert peak - baseline <= 256 * MiB, f"{(peak - baseline) / MiB:.0f} MiB over the baseline"
    clusters = pd.read_parquet(tmp_path / "out_bombs" / "clusters.parquet")
    assert (clusters["reason"].str.startswith("decoded reduced")).sum() == 2


MEASURE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from rca_gpu.data.decoding import _has_alpha, decode_cost, decode_image_noted
    from rca_gpu.data.properties import image_properties
    from rca_gpu.features.backbones import image_transform
    from PIL import Image

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    transform = image_transform(224)
    Image.new("RGB", (8, 8)).save(sys.argv[2] + ".warm.png")  # every library loaded before the children fork
    transform(decode_image_noted(sys.argv[2] + ".warm.png", sys.argv[1])[0])
    image_properties(Image.new("RGB", (8, 8)))
    for path in sys.argv[2:]:
        pid = os.fork()
        if pid == 0:  # a child per file: its own peak, nothing left over from the one before
            with Image.open(path) as image:
                estimate = decode_cost(*image.size, image.mode, image.format, sys.argv[1], alpha=_has_alpha(image))
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets the peak (VmHWM) to what is resident now
            before = status("VmRSS")
            picture, _ = decode_image_noted(path, sys.argv[1])
            image_properties(picture)
            transform(picture)
            print(json.dumps({"path": path, "peak": status("VmHWM") - before, "estimate": estimate}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
""")

# (file name, how to make a 3000 x 3000 picture of that format and mode)
MEASURED = [
    ("grey.png", lambda p, a: Image.fromarray(a).save(p)),
    ("rgb.png", lambda p, a: Image.fromarray(np.dstack([a, a // 2, a])).save(p)),
    ("rgba.png", lambda p, a: Image.fromarray(np.dstack([a, a, a, a])).save(p)),
    ("rgb.webp", lambda p, a: Image.fromarray(np.dstack([a, a // 2, a])).save(p, lossless=True)),
    ("rgba.webp", lambda p, a: Image.fromarray(np.dstack([a, a, a, a])).save(p, lossless=True)),
    ("rgb.tif", lambda p, a: Image.fromarray(np.dstack([a, a // 2, a])).save(p, compression="tiff_deflate")),
    ("int32.tif", lambda p, a: Image.fromarray(a.astype(np.int32) * 1000).save(p, compression="tiff_deflate")),
    ("grey16.png", lambda p, a: Image.fromarray(a.astype(np.uint16) * 257).save(p)),
    ("palette.gif", lambda p, a: Image.fromarray(a).convert("P").save(p)),
    ("rgb.jpg", lambda p, a: Image.fromarray(np.dstack([a, a // 2, a])).save(p)),
    ("rgb.bmp", lambda p, a: Image.fromarray(np.dstack([a, a // 2, a])).save(p)),
    ("grey.pgm", lambda p, a: Image.fromarray(a).save(p)),
]


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("target", ["RGB", "L"])
def test_the_decode_estimate_bounds_the_measured_peak_of_each_format(tmp_path, target):
    """rca_gpu.data.decoding.decode_cost, the rule of the budget, is an upper bound of the memory that decoding,
    the image properties and an extractor's transform take, for each format and mode."""
    picture = np.zeros((3000, 3000), np.uint8)
    picture[::7] = 200
    paths = []
    for name, make in MEASURED:
        make(tmp_path / name, picture)
        paths.append(str(tmp_path / name))
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    done = subprocess.run([sys.executable, str(script), target, *paths], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1",  # no thread pool for the forked children
                               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                              os.environ.get("PYTHONPATH", "")])})
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(MEASURED), done.stderr[-3000:]
    over = [(Path(r["path"]).name, r["peak"] // MiB, r["estimate"] // MiB) for r in rows if r["peak"] > r["estimate"]]
    assert not over, f"measured peak over the estimate (file, MiB, MiB): {over}"


# --------------------------------------------------------------------------------------------------
# Family 12: two decoding kinds. A 16-bit, 32-bit or float twin of an 8-bit picture decodes to that picture;
# light content on transparency stays visible.
# --------------------------------------------------------------------------------------------------


def _grey_levels(size: int = 16, seed: int = 0) -> np.ndarray:
    """An 8-bit picture using the whole range with many grey levels (0 and 255 included)."""
    picture = np.random.default_rng(seed).integers(0, 256, size=(size, size)).astype(np.uint8)
    picture[0, 0], picture[0, 1] = 0, 255
    return picture


def _dark_levels(size: int = 16, seed: int = 1) -> np.ndarray:
    """A dark 8-bit picture (values 3..60): a stretch of its range would brighten it."""
    return np.random.default_rng(seed).integers(3, 61, size=(size, size)).astype(np.uint8)


def _tiff_of(path: Path, values: np.ndarray, sample_format: int) -> None:
    """An uncompressed grey TIFF of ``values`` (any integer or float dtype) with the SampleFormat tag
    (1 unsigned, 2 signed, 3 float): what other tools write, e.g. for unsigned 32-bit samples."""
    height, width = values.shape
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    entries = [(256, 4, width), (257, 4, height), (258, 3, values.dtype.itemsize * 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(data)), (339, 3, sample_format)]
    offset = 8 + 2 + 12 * len(entries) + 4
    body = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = offset if tag == 273 else value
        body += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                      else struct.pack("<I", value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + body + b"\x00\x00\x00\x00" + data)


def _full_scale(picture: np.ndarray, top: int) -> np.ndarray:
    return np.round(picture.astype(np.float64) * top / 255)


# (twin kind, file name, writer of the twin of an 8-bit picture v)
TWINS = [
    ("16-bit PNG (v * 257)", "t16.png", lambda p, v: Image.fromarray(v.astype(np.uint16) * 257).save(p)),
    ("16-bit big-endian TIFF (I;16B)", "t16b.tif", lambda p, v: _i16b(v.astype(np.uint16) * 257).save(p)),
    ("16-bit TIFF written by another tool", "t16u.tif", lambda p, v: _tiff_of(p, v.astype(np.uint16) * 257, 1)),
    ("32-bit signed TIFF, full scale (I)", "t32.tif",
     lambda p, v: Image.fromarray(_full_scale(v, 2**31 - 1).astype(np.int32)).save(p)),
    ("32-bit signed TIFF by another tool", "t32s.tif", lambda p, v: _tiff_of(p, _full_scale(v, 2**31 - 1)
                                                                            .astype(np.int32), 2)),
    ("32-bit unsigned TIFF, full scale (I;32)", "t32u.tif", lambda p, v: _tiff_of(p, _full_scale(v, 2**32 - 1)
                                                                                  .astype(np.uint32), 1)),
    ("32-bit integer TIFF holding 8-bit values", "t32small.tif", lambda p, v: Image.fromarray(v.astype(np.int32))
     .save(p)),
    ("float TIFF in [0, 1] (F)", "tf01.tif", lambda p, v: Image.fromarray((v / 255).astype(np.float32)).save(p)),
    ("float TIFF in [0, 255]", "tf255.tif", lambda p, v: Image.fromarray(v.astype(np.float32)).save(p)),
]


@pytest.mark.parametrize("picture", [_grey_levels, _dark_levels], ids=["full range", "dark"])
@pytest.mark.parametrize("kind, name, write", TWINS, ids=[t[0] for t in TWINS])
def test_a_wide_twin_decodes_to_its_8bit_picture(tmp_path, kind, name, write, picture):
    values = picture()
    Image.fromarray(values).save(tmp_path / "eight.png")
    write(tmp_path / name, values)
    assert np.array_equal(_decode(tmp_path / name), _decode(tmp_path / "eight.png")), kind


def _run_labels(folder: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, features) of a pixels run over ``folder`` (the images sorted by name)."""
    succeeded(runner.invoke(app, ["run", str(folder), "--out", str(out), "-p", PIXELS, *QUICK]))
    clusters = pd.read_parquet(out / "clusters.parquet")
    import pyarrow.parquet as pq

    shard = sorted((out / "cache").rglob("part-*.parquet"))
    features = np.concatenate([np.stack(pq.read_table(s, columns=["feature"]).column("feature").to_pylist())
                               for s in shard])
    return clusters["cluster"].to_numpy(), features


def test_wide_twins_cluster_like_their_8bit_pictures(tmp_path):
    """The same pictures as 8-bit PNGs, 16-bit PNGs, 32-bit TIFFs (signed and unsigned) and float TIFFs: the
    same features and the same clusters."""
    rng = np.random.default_rng(3)
    pictures = []
    for i in range(12):
        picture = rng.integers(0, 50, size=(16, 16)).astype(np.uint8)
        picture[(slice(0, 8) if i % 2 else slice(8, 16)), :] = 180 + i
        pictures.append(picture)
    results = {}
    for kind, write in [("eight", lambda p, v: Image.fromarray(v).save(p))] + [(t[1], t[2]) for t in TWINS]:
        folder = tmp_path / kind.replace(".", "_")
        folder.mkdir()
        suffix = ".png" if kind == "eight" else Path(kind).suffix
        for i, picture in enumerate(pictures):
            write(folder / f"img_{i:02d}{suffix}", picture)
        results[kind] = _run_labels(folder, tmp_path / f"out_{folder.name}")
    labels, features = results.pop("eight")
    assert len(set(labels.tolist())) == 2
    for kind, (twin_labels, twin_features) in results.items():
        assert np.array_equal(twin_labels, labels) and np.array_equal(twin_features, features), kind


def _on_transparency(colour: int, shape: str = "digit", mode: str = "RGBA", seed: int | None = None) -> Image.Image:
    """A stroke of grey level ``colour`` (a digit, or a bar at the top / bottom) on a transparent ground; with a
    ``seed``, the levels vary by up to 25 below ``colour``."""
    alpha = _digit() if shape == "digit" else np.zeros((16, 16), np.uint8)
    if shape == "top":
        alpha[2:7, :] = 255
    elif shape == "bottom":
        alpha[9:14, :] = 255
    grey = np.full((16, 16), colour, np.uint8)
    if seed is not None:
        grey = grey - np.random.default_rng(seed).integers(0, 26, size=(16, 16)).astype(np.uint8)
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    return Image.fromarray(np.dstack([grey, grey, grey, alpha]))


# (case, image maker, check on the decoded 8-bit grey array)
TRANSPARENCY = [
    ("white digit on transparency (RGBA): on black, visible", lambda: _on_transparency(255),
     lambda a: np.array_equal(a, _digit())),
    ("white digit on transparency (LA)", lambda: _on_transparency(255, mode="LA"),
     lambda a: np.array_equal(a, _digit())),
    ("light grey digit on transparency: on black", lambda: _on_transparency(200),
     lambda a: a.max() >= 195 and a.min() == 0),
    ("black digit on transparency: on white, visible", lambda: _on_transparency(0),
     lambda a: np.array_equal(a, 255 - _digit())),
    ("dark grey digit on transparency: on white", lambda: _on_transparency(60),
     lambda a: a.min() <= 65 and a.max() == 255),
    ("white bar on transparency: on black", lambda: _on_transparency(255, "top"),
     lambda a: (a[2:7] == 255).all() and (a[9:] == 0).all()),
    ("white palette digit with a transparent colour: on black",
     lambda: Image.fromarray(np.where(_digit() > 0, 255, 0).astype(np.uint8)).convert("P"),
     lambda a: np.array_equal(a, np.where(_digit() > 0, 255, 0))),
    ("half-transparent white: light content, on black", lambda: Image.fromarray(
        np.dstack([np.full((16, 16), 255, np.uint8)] * 3 + [np.full((16, 16), 128, np.uint8)])),
     lambda a: (np.abs(a.astype(int) - 128) <= 1).all()),
    ("fully transparent: white", lambda: Image.fromarray(np.zeros((16, 16, 4), np.uint8)),
     lambda a: (a == 255).all()),
]


@pytest.mark.parametrize("case, make, check", TRANSPARENCY, ids=[t[0] for t in TRANSPARENCY])
def test_content_on_transparency_stays_visible(tmp_path, case, make, check):
    image = make()
    kwargs = {"transparency": 0} if image.mode == "P" else {}
    path = _write(tmp_path, "t.png", image, **kwargs)
    decoded = _decode(path)
    assert check(decoded), decoded


@pytest.mark.quality
def test_light_content_on_transparency_is_clustered_by_its_shape(tmp_path):
    """White bars at the top or the bottom of transparent images: two clusters, as the pictures show (on a
    white background every image was blank and the clusters meant nothing)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        _on_transparency(255, "top" if i % 2 else "bottom", seed=i).save(folder / f"bar_{i:02d}.png")
    labels, features = _run_labels(folder, tmp_path / "out")
    assert features.std(axis=0).max() > 0.05  # not blank pictures
    truth = np.arange(12) % 2
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, labels) == 1.0


# --------------------------------------------------------------------------------------------------
# Family 13: the feature cache holds what the files hold. Keyed on the bytes of every image and on the
# extractor; a shard carries its key and is refused when it differs.
# --------------------------------------------------------------------------------------------------


def _bars_bmp(folder: Path, n: int = 12) -> list[Path]:
    """n 16 x 16 BMPs (every file the same size), a bright bar at the top (odd i) or the bottom (even i)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        image = rng.integers(0, 40, size=(16, 16)).astype(np.uint8)
        image[(slice(0, 8) if i % 2 else slice(8, 16)), :] = 220
        paths.append(folder / f"img_{i:02d}.bmp")
        Image.fromarray(image).save(paths[-1])
    return paths


def _replace_keeping_name_size_time(path: Path, content: bytes) -> None:
    """Write ``content`` (of the file's own size) into ``path`` and give it back its modification time."""
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _run_info(source: Path, out: Path, *extra: str, pipeline: str = PIXELS) -> tuple[pd.DataFrame, dict]:
    """(clusters.parquet, run.json) of a run; run.json's "output" holds what the command printed."""
    result = succeeded(runner.invoke(app, ["run", str(source), "--out", str(out), "-p", pipeline, *QUICK, *extra]))
    info = json.loads((out / "run.json").read_text())
    info["output"] = result.output
    return pd.read_parquet(out / "clusters.parquet"), info


def _same_clusters(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    from sklearn.metrics import adjusted_rand_score

    return (a["status"].tolist() == b["status"].tolist() and a["reason"].tolist() == b["reason"].tolist()
            and adjusted_rand_score(a["cluster"], b["cluster"]) == 1.0)


REPLACEMENTS = [
    ("every image swapped with its neighbour", lambda paths: [(p, paths[i ^ 1]) for i, p in enumerate(paths)]),
    ("one image replaced by one of the other group", lambda paths: [(paths[0], paths[1])]),
    ("two images exchanged", lambda paths: [(paths[2], paths[5]), (paths[5], paths[2])]),
]


@pytest.mark.parametrize("source_kind", ["folder", "manifest"])
@pytest.mark.parametrize("case, pairs", REPLACEMENTS, ids=[r[0] for r in REPLACEMENTS])
def test_images_replaced_with_the_same_name_size_and_time_are_extracted_again(tmp_path, case, pairs, source_kind):
    paths = _bars_bmp(tmp_path / "images")
    source = tmp_path / "images"
    if source_kind == "manifest":
        source = tmp_path / "images" / "manifest.csv"
        pd.DataFrame({"path": [p.name for p in paths]}).to_csv(source, index=False)
    out = tmp_path / "out"
    _, first = _run_info(source, out)
    assert first["features"]["from_cache"] == 0
    contents = {p: p.read_bytes() for p in paths}
    changed = pairs(paths)
    for target, donor in changed:
        _replace_keeping_name_size_time(target, contents[donor])
    clusters, info = _run_info(source, out)
    assert info["features"]["from_cache"] == 0  # the content changed: nothing is reused
    fresh, _ = _run_info(source, tmp_path / "fresh")
    assert _same_clusters(clusters, fresh)


def test_touched_and_copied_images_keep_their_cached_features(tmp_path):
    """The key is the content: a new modification time, or the same images copied elsewhere, reuse the cache."""
    paths = _bars_bmp(tmp_path / "images")
    out = tmp_path / "out"
    _run_info(tmp_path / "images", out)
    for path in paths:
        os.utime(path, ns=(0, 10**18))
    _, info = _run_info(tmp_path / "images", out)
    assert info["features"]["from_cache"] == len(paths)


SWAPS = [
    ("a shard of a run on other images", "other images"),
    ("a shard without a key (an older rca-gpu)", "no key"),
    ("a shard whose key was edited", "edited key"),
    ("a shard of another extractor setting", "other extractor"),
]


@pytest.mark.parametrize("case, kind", SWAPS, ids=[s[0] for s in SWAPS])
def test_a_shard_swapped_in_from_elsewhere_is_refused(tmp_path, case, kind):
    import pyarrow.parquet as pq

    _bars_bmp(tmp_path / "mine")
    others = tmp_path / "others"
    _good_images(others, 12)
    out, other_out = tmp_path / "out", tmp_path / "other_out"
    _run_info(tmp_path / "mine", out)
    pipeline = "pixels(image_size=4)+pca(n_components=2)+kmeans(k=2)" if kind == "other extractor" else PIXELS
    _run_info(others if kind != "other extractor" else tmp_path / "mine", other_out, pipeline=pipeline)
    shard = next(out.glob("cache/*/part-*.parquet"))
    foreign = next(other_out.glob("cache/*/part-*.parquet"))
    table = pq.read_table(foreign)
    if kind == "no key":
        table = table.replace_schema_metadata({})
    elif kind == "edited key":
        table = table.replace_schema_metadata({b"rca_gpu.cache_key": b"0" * 20})
    pq.write_table(table, shard)  # the run's own shard, swapped for the foreign one under the same name
    clusters, info = _run_info(tmp_path / "mine", out)
    assert info["features"]["from_cache"] == 0
    assert "refusing cache shard" in info["output"] and "its rows are extracted again" in info["output"]
    fresh, _ = _run_info(tmp_path / "mine", tmp_path / "fresh")
    assert _same_clusters(clusters, fresh)
    assert all(pq.read_schema(s).metadata[b"rca_gpu.cache_key"] for s in out.glob("cache/*/part-*.parquet"))


DUT_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    SCALE = 1.0

    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2))
        model[0].register_forward_hook(lambda m, i, o: o * SCALE)
        model.input_shape = (1, 8, 8)
        model.classes = ["a", "b"]
        return model
""")


@pytest.mark.parametrize("change", ["weights", "factory module"])
def test_a_dut_changed_with_the_same_name_size_and_time_is_extracted_again(tmp_path, monkeypatch, change):
    import torch
    from helpers import import_source

    module = import_source(tmp_path, monkeypatch, "rca_cache_dut", DUT_MODULE)
    torch.manual_seed(0)
    torch.save(module.build().state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    (tmp_path / "other").mkdir()
    torch.save(module.build().state_dict(), tmp_path / "other" / "w.pt")  # the same archive names: the same size
    _bars_bmp(tmp_path / "images")
    args = ["--model", f"rca_cache_dut:build={tmp_path / 'w.pt'}"]
    pipeline = "dut+pca(n_components=2)+kmeans(k=2)"
    out = tmp_path / "out"
    _run_info(tmp_path / "images", out, *args, pipeline=pipeline)
    _, again = _run_info(tmp_path / "images", out, *args, pipeline=pipeline)
    assert again["features"]["from_cache"] == 12
    if change == "weights":
        _replace_keeping_name_size_time(tmp_path / "w.pt", (tmp_path / "other" / "w.pt").read_bytes())
    else:
        source = tmp_path / "rca_cache_dut.py"
        _replace_keeping_name_size_time(source, source.read_bytes().replace(b"SCALE = 1.0", b"SCALE = 2.0"))
        monkeypatch.delitem(sys.modules, "rca_cache_dut")
    _, info = _run_info(tmp_path / "images", out, *args, pipeline=pipeline)
    assert info["features"]["from_cache"] == 0


def test_rows_decided_by_the_memory_budget_are_decoded_again_under_another_budget(tmp_path):
    folder = tmp_path / "images"
    _good_images(folder, 8)
    _jpeg_real(folder / "large.jpg", 4000, 4000)
    out = tmp_path / "out"
    clusters, _ = _run_info(folder, out, "--max-image-memory", "64MiB")
    assert clusters.set_index(clusters["path"].map(lambda p: Path(p).name)).loc["large.jpg", "reason"].startswith(
        "decoded reduced to fit the memory budget (1/4 of each side)")
    clusters, info = _run_info(folder, out, "--max-image-memory", "1GiB")
    assert info["features"]["from_cache"] == 8  # the good images; the JPEG is decoded again, whole
    assert clusters.set_index(clusters["path"].map(lambda p: Path(p).name)).loc["large.jpg", "reason"] == ""


@pytest.mark.parametrize("entry, expected", [
    ("fifo", "not a regular file"), ("folder", "not a regular file"), ("missing", "unreadable: No such file"),
    ("file", None)])
def test_the_content_digest_never_blocks_and_names_what_it_cannot_read(tmp_path, entry, expected):
    from rca_gpu.data.sources import file_digest

    path = tmp_path / "x.png"
    if entry == "fifo":
        os.mkfifo(path)
    elif entry == "folder":
        path.mkdir()
    elif entry == "file":
        path.write_bytes(b"\x00" * 3_000_000)  # read in blocks of 1 MiB
    digest = file_digest(path)
    if expected is None:
        import hashlib

        assert digest == hashlib.blake2b(b"\x00" * 3_000_000, digest_size=16).hexdigest()
    else:
        assert digest.startswith(expected)


# --------------------------------------------------------------------------------------------------
# Family 14: --dask addresses, checked before any connection (services that are no scheduler:
# tests/test_distributed.py).
# --------------------------------------------------------------------------------------------------

# (--dask value, what the error says)
DASK_ADDRESSES = [
    ("localhost:8786", "it has no scheme; write tcp://localhost:8786"),
    ("127.0.0.1:8786", "it has no scheme; write tcp://127.0.0.1:8786"),
    ("", "it is empty"),
    ("tcp://", "it names no host"),
    ("tcp://:8786", "it names no host"),
    ("tcp://host:0", "the port 0 is not in 1..65535"),
    ("tcp://host:65536", "the port is not a number in 1..65535"),
    ("tcp://host:99999999999", "the port is not a number in 1..65535"),
    ("tcp://host:abc", "the port is not a number in 1..65535"),
    ("tcp://host:-1", "the port is not a number in 1..65535"),
    ("tcp://host:", "the port after ':' is missing"),
    ("http://host:8787", "http:// is a web address"),
    ("https://host", "https:// is a web address"),
    ("ftp://host:21", "the scheme 'ftp' is not one of them"),
    ("tcp://host:8786/status", "a path, query or fragment has no place in it"),
    ("tcp://host:8786?x=1", "a path, query or fragment has no place in it"),
    ("tcp://user:secret@host:8786", "a user name has no place in it"),
    ("tcp://host name:8786", "it holds spaces or control characters"),
    (" tcp://host:8786", "it holds spaces or control characters"),
    ("local ", "it holds spaces or control characters"),
    ("tcp://ho\x00st:8786", "it holds spaces or control characters"),
    ("tcp://[::1:8786", "the host in brackets is not an IPv6 address"),
    ("tcp://[not-ipv6]:8786", "the host in brackets is not an IPv6 address"),
    ("tcp://-host:8786", "the host '-host' is not a host name"),
    ("tcp://hö st:1", "it holds spaces or control characters"),
    ("inproc://", "inproc:// names no scheduler"),
]


@pytest.mark.parametrize("address, fragment", DASK_ADDRESSES, ids=[repr(a) for a, _ in DASK_ADDRESSES])
def test_a_malformed_dask_address_is_one_line_before_work(small_data, tmp_path, address, fragment):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_data), "--out", str(out), "-p", PIXELS, "--dask", address, *QUICK])
    one_line_error(result, "The --dask option must be 'local' or a scheduler address SCHEME://HOST:PORT", fragment)
    _no_work_done(out)


# --------------------------------------------------------------------------------------------------
# Family 15: magnitudes. Features of any finite magnitude cluster as their copy at unit scale: they enter
# the engine multiplied by an exact power of two (run.json features.scale_exponent).
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_features():
    """Four planted blobs, 30 rows each, 8 features of magnitude about 5 (float64)."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=120, centers=4, n_features=8, cluster_std=0.4, center_box=(-10, 10),
                      random_state=4)
    return x, y


# (case, factor, dtype of the stored copy): denormal float32 starts below 1.2e-38
MAGNITUDES = [
    ("x 1e30, float32", 1e30, np.float32),
    ("x 1e-41, float32 (denormal)", 1e-41, np.float32),
    ("x 2**100, float32 (brought back exactly)", 2.0**100, np.float32),
    ("x 1e20, float32", 1e20, np.float32),
    ("x 1e-20, float32", 1e-20, np.float32),
    ("x 1e300, float64 (beyond float32)", 1e300, np.float64),
    ("x 1e-300, float64 (below float32)", 1e-300, np.float64),
    ("x 1e-41, float64", 1e-41, np.float64),
    ("x 1e15, int64", 1e15, np.int64),
    ("x 1e6, float32 (within the band: left as it is)", 1e6, np.float32),
    ("x 1e-8, float32 (within the band)", 1e-8, np.float32),
]


def _features_run(tmp_path: Path, x: np.ndarray, kind: str, name: str) -> tuple[np.ndarray, dict]:
    """(labels by row, run.json) of ``rca-gpu run --features`` on ``x`` saved as ``kind`` (npy or parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"{name}.{kind}"
    if kind == "npy":
        np.save(path, x)
    else:
        pq.write_table(pa.table({"feature": pa.array(list(x), pa.list_(pa.from_numpy_dtype(x.dtype)))}), path)
    out = tmp_path / f"out_{name}_{kind}"
    result = runner.invoke(app, ["run", "--features", str(path), "--out", str(out), "--device", "cpu", "--quiet",
                                 "--no-report"])
    succeeded(result)
    clusters = pd.read_parquet(out / "clusters.parquet")
    return clusters["cluster"].to_numpy(), json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def unit_scale_labels(blob_features, tmp_path_factory):
    x, _ = blob_features
    folder = tmp_path_factory.mktemp("magnitudes")
    return {kind: _features_run(folder, x.astype(np.float32), kind, "plain") for kind in ("npy", "parquet")}


def _scaled(x: np.ndarray, factor: float, dtype) -> np.ndarray:
    return np.round(x * factor).astype(dtype) if dtype is np.int64 else (x * factor).astype(dtype)


@pytest.mark.quality
@pytest.mark.parametrize("kind", ["npy", "parquet"])
@pytest.mark.parametrize("case, factor, dtype", MAGNITUDES, ids=[m[0] for m in MAGNITUDES])
def test_features_of_any_magnitude_cluster_as_at_unit_scale(blob_features, unit_scale_labels, tmp_path, kind, case,
                                                             factor, dtype):
    from sklearn.metrics import adjusted_rand_score

    x, truth = blob_features
    reference, reference_info = unit_scale_labels[kind]
    assert adjusted_rand_score(truth, reference) == 1.0  # the four blobs, at unit scale
    labels, info = _features_run(tmp_path, _scaled(x, factor, dtype), kind, "scaled")
    assert info["counts"]["rejected"] == 0
    assert adjusted_rand_score(reference, labels) == 1.0 and np.array_equal(reference == -1, labels == -1)
    assert reference_info["features"]["scale_exponent"] == 0  # row norms about 16: left as they are
    if factor == 2.0**100:  # brought back exactly: the engine sees x / 16, a power of two from the reference
        assert info["features"]["scale_exponent"] == -104
    elif abs(np.log2(factor * 16)) <= 30:
        assert info["features"]["scale_exponent"] == 0


@pytest.mark.quality
@pytest.mark.parametrize("case, factor, dtype", MAGNITUDES, ids=[m[0] for m in MAGNITUDES])
def test_the_estimator_clusters_any_magnitude_as_at_unit_scale(blob_features, case, factor, dtype):
    from sklearn.metrics import adjusted_rand_score

    from rca_gpu import FailureClusterer

    x, truth = blob_features
    reference = FailureClusterer(device="cpu", random_state=0).fit(x.astype(np.float32)).labels_
    assert adjusted_rand_score(truth, reference) == 1.0
    scaled = _scaled(x, factor, dtype)
    labels = FailureClusterer(device="cpu", random_state=0).fit(scaled.astype(np.float64) if dtype is np.int64
                                                                else scaled).labels_
    assert adjusted_rand_score(reference, labels) == 1.0 and np.array_equal(reference == -1, labels == -1)


def test_unit_vectors_are_left_exactly_as_they_are():
    """Unit vectors (the default backbones' features) and features of ordinary magnitude are left bit for
    bit (no cluster moves); only magnitudes beyond 2**+-30 are brought to unit scale."""
    import torch

    from rca_gpu.features.extract import normalise_scale, row_norms, scale_exponent

    x = torch.nn.functional.normalize(torch.randn(500, 1280, generator=torch.Generator().manual_seed(0)), dim=1)
    info: dict = {}
    assert torch.equal(normalise_scale(x.clone(), info), x) and info["scale_exponent"] == 0
    assert scale_exponent(row_norms(np.full((3, 4), 1e-41, np.float32))) == 135  # norms 2e-41 = 2**-135.2
    assert scale_exponent(np.array([0.0, np.nan, np.inf])) == 0  # no usable row: nothing to scale by
    assert scale_exponent(np.full(5, 2.0**30)) == 0 and scale_exponent(np.full(5, 2.0**31)) == -31
    assert scale_exponent(np.full(5, 1e-9)) == 0 and scale_exponent(np.full(5, 1e-10)) == 33


# --------------------------------------------------------------------------------------------------
# Family 16: paths whose bytes are not UTF-8, in every argument. Inputs work end to end; output folders are
# refused in one line. Such a path is written as text with \xNN escapes, beside its exact bytes (Parquet:
# path_bytes, JSON: <key>_base64; rca_gpu.data.paths).
# --------------------------------------------------------------------------------------------------

LATIN1 = os.fsdecode(b"caf\xe9")  # a folder name in Latin-1: the byte 0xe9 is not UTF-8

FACTORY = textwrap.dedent("""
    from torch import nn

    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2))
        model.input_shape = (1, 8, 8)
        model.classes = ["a", "b"]
        return model
""")


@pytest.fixture(scope="module")
def latin1_folder(tmp_path_factory) -> Path:
    """A folder named with a Latin-1 byte holding images (images/), manifests, a config, features, metadata,
    the weights of a DNN under test (and its factory module beside the folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    root = tmp_path_factory.mktemp("latin1")
    folder = root / LATIN1
    _good_images(folder / "images", 12, size=8)
    names = [f"images/good_{i:03d}.png" for i in range(12)]
    pd.DataFrame({"path": names, "root_cause": ["top" if i % 2 else "bottom" for i in range(12)]}).to_csv(
        folder / "manifest.csv", index=False)
    with open(folder / "manifest.parquet", "wb") as handle:  # pyarrow takes UTF-8 paths only; Python any
        pq.write_table(pa.table({"path": names}), handle)
    with open(folder / "bytes_paths.parquet", "wb") as handle:  # paths as bytes, one of them not UTF-8
        import shutil

        shutil.copy(folder / "images" / "good_000.png", os.path.join(os.fsencode(folder), b"b\xe9.png"))
        pq.write_table(pa.table({"path": pa.array([b"b\xe9.png"] + [n.encode() for n in names[1:]])}), handle)
    (folder / "run.toml").write_text("seed = 3\n")
    features = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    features[::2] += 5
    np.save(folder / "features.npy", features)
    with open(folder / "features.parquet", "wb") as handle:
        pq.write_table(pa.table({"feature": pa.array(list(features), pa.list_(pa.float32())), "path": names}), handle)
    pd.DataFrame({"path": names}).to_csv(folder / "metadata.csv", index=False)
    (root / "rca_latin1_dut.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    import rca_latin1_dut

    torch.save(rca_latin1_dut.build().state_dict(), folder / "weights.pt")
    torch.jit.save(torch.jit.script(rca_latin1_dut.build()), str(root / "scripted.pt"))
    os.replace(root / "scripted.pt", folder / "scripted.pt")
    yield folder
    sys.path.remove(str(root))


FEATURES = "pca(n_components=2)+kmeans(k=2)"
# (case, arguments after `rca-gpu run`, given as a path inside the folder named in Latin-1; {f} = the folder)
LATIN1_INPUTS = [
    ("SOURCE: a folder named in Latin-1", ["{f}/images"]),
    ("SOURCE: a CSV manifest in it", ["{f}/manifest.csv"]),
    ("SOURCE: a Parquet manifest in it", ["{f}/manifest.parquet"]),
    ("SOURCE: a Parquet manifest of byte paths, one not UTF-8", ["{f}/bytes_paths.parquet"]),
    ("--config in it", ["{f}/images", "--config", "{f}/run.toml"]),
    ("--image-root: it", ["{f}/manifest.csv", "--image-root", "{f}"]),
    ("--model factory=weights in it", ["{f}/images", "--model", "rca_latin1_dut:build={f}/weights.pt", "-p",
                                       "dut+pca(n_components=2)+kmeans(k=2)"]),
    ("--features .npy in it", ["--features", "{f}/features.npy", "-p", FEATURES]),
    ("--features .parquet in it (image paths in it)", ["--features", "{f}/features.parquet", "-p", FEATURES]),
    ("--metadata in it (image paths in it)", ["--features", "{f}/features.npy", "--metadata", "{f}/metadata.csv",
                                              "-p", FEATURES]),
]


@pytest.mark.parametrize("case, arguments", LATIN1_INPUTS, ids=[c[0] for c in LATIN1_INPUTS])
def test_an_input_path_that_is_not_utf8_works_end_to_end(latin1_folder, tmp_path, case, arguments):
    import base64

    args = [a.replace("{f}", str(latin1_folder)) for a in arguments]
    if "-p" not in args:
        args += ["-p", PIXELS]
    out = tmp_path / "out"
    succeeded(runner.invoke(app, ["run", *args, "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet"]))
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(clusters) == 12 and (clusters["status"] != "rejected").all(), clusters["reason"].tolist()
    assert (out / "report.html").is_file()
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))  # valid UTF-8, no lone surrogate
    given = args[0] if not args[0].startswith("--") else args[1]
    assert info["source"]["given"] == given.replace(LATIN1, "caf\\xe9")
    assert os.fsdecode(base64.b64decode(info["source"]["given_base64"])) == given
    if "path_bytes" in clusters.columns:  # the images' paths hold the Latin-1 folder: their exact bytes beside
        for text, raw in zip(clusters["path"], clusters["path_bytes"], strict=True):
            assert "caf\\xe9" in text and os.path.isfile(os.fsdecode(raw))
    else:
        assert clusters["path"].isna().all()  # features without image paths


def test_a_torchscript_model_named_in_latin1_loads(latin1_folder):
    from rca_gpu.features.dut import load_model

    model = load_model(str(latin1_folder / "scripted.pt"), device=__import__("torch").device("cpu"))
    assert model(__import__("torch").zeros(1, 1, 8, 8)).shape == (1, 2)


def test_a_weights_file_named_in_latin1_loads(latin1_folder, tmp_path):
    """--weights of a backbone: the state_dict file is opened by Python, whatever its name."""
    import torch
    import torchvision

    path = latin1_folder / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    from rca_gpu.features.backbones import build_backbone

    assert build_backbone("mobilenet_v2", str(path)) is not None


# (case, the command line; {f} = the folder named in Latin-1, {run} = a finished run, {out} = a fresh folder)
LATIN1_OUTPUTS = [
    ("run --out", ["run", "{f}/images", "--out", "{f}/out", "-p", PIXELS, "--device", "cpu"], "--out"),
    ("run --features --out", ["run", "--features", "{f}/features.npy", "--out", "{f}/out", "-p", FEATURES], "--out"),
    ("demo --out", ["demo", "--out", "{f}/demo"], "--out"),
    ("study --out", ["study", "{f}/manifest.csv", "--out", "{f}/study", "-f", "pixels"], "--out"),
    ("datasets make --out", ["datasets", "make", "mnist-rc", "--out", "{f}/data"], "--out"),
    ("export --to", ["export", "{run}", "--to", "{f}/export"], "--to"),
    ("assign --out", ["assign", "{run}", "{f}/images", "--out", "{f}/assigned"], "--out"),
    ("select --out", ["select", "{run}", "{f}/images", "--budget", "2", "--out", "{f}/selected"], "--out"),
]


@pytest.fixture(scope="module")
def utf8_run(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("utf8run") / "images"
    _good_images(data, 12, size=8)
    out = data.parent / "run"
    succeeded(runner.invoke(app, ["run", str(data), "--out", str(out), "-p", PIXELS, *QUICK]))
    return out


@pytest.mark.parametrize("case, command, option", LATIN1_OUTPUTS, ids=[c[0] for c in LATIN1_OUTPUTS])
def test_an_output_folder_that_is_not_utf8_is_refused_before_work(latin1_folder, utf8_run, case, command, option):
    args = [a.replace("{f}", str(latin1_folder)).replace("{run}", str(utf8_run)) for a in command]
    before = sorted(os.listdir(os.fsencode(latin1_folder)))
    result = runner.invoke(app, [*args, "--quiet"])
    from rca_gpu.errors import SpecError

    if isinstance(result.exception, SpecError):  # `datasets make`: its error is printed by rca_gpu.cli.main
        result = type("Printed", (), {"exit_code": 2, "output": f"error: {result.exception}", "exception": None})()
    one_line_error(result, f"The {option} folder", "caf\\xe9", "has a path whose bytes are not UTF-8",
                   "Pass an output folder whose path is UTF-8")
    assert sorted(os.listdir(os.fsencode(latin1_folder))) == before  # nothing made


@pytest.mark.parametrize("command", [["report", "{r}"], ["evaluate", "{r}"], ["export", "{r}", "--to", "{o}"],
                                     ["causes", "{r}", "--name", "0=top"], ["compare", "{r}", "{r}"],
                                     ["assign", "{r}", "{i}", "--out", "{o}"]],
                         ids=["report", "evaluate", "export", "causes", "compare", "assign"])
def test_a_run_folder_renamed_in_latin1_is_one_line(utf8_run, tmp_path, command):
    """A run folder renamed afterwards with a byte that is not UTF-8: refused in one line, nothing written."""
    import shutil

    renamed = tmp_path / os.fsdecode(b"r\xe9n")
    shutil.copytree(utf8_run, renamed)
    args = [a.replace("{r}", str(renamed)).replace("{o}", str(tmp_path / "o"))
            .replace("{i}", str(utf8_run.parent / "images")) for a in command]
    one_line_error(runner.invoke(app, args))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["npy", "parquet"])
def test_rows_beyond_float32_next_to_the_others_are_rejected_with_their_reason(blob_features, tmp_path, kind):
    """A float64 file whose first rows lie at 1e300 and the rest at unit scale: float32 cannot hold both, so
    the far rows are rejected with the reason, the others clustered: 3 far rows in one batch, or 40 far rows
    making a batch of their own, scaled on their own and refused when brought to the common exponent)."""
    import rca_gpu.features.precomputed as precomputed

    x, _ = blob_features
    for rows_per_batch, far in ((None, 3), (40, 40)):
        mixed = x.astype(np.float64)
        mixed[:far] *= 1e300
        if rows_per_batch:
            precomputed_batch = precomputed._rows_per_batch
            precomputed._rows_per_batch = lambda d, rows=rows_per_batch: rows
        try:
            name = f"mixed{rows_per_batch}"
            path = tmp_path / f"{name}.{kind}"
            if kind == "npy":
                np.save(path, mixed)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({"feature": pa.array(list(mixed), pa.list_(pa.float64()))}), path)
            failures, features = precomputed.load_features(path)
        finally:
            if rows_per_batch:
                precomputed._rows_per_batch = precomputed_batch
        assert features.positions.tolist() == list(range(far, 120))
        assert set(features.rejected) == set(range(far))
        assert all(r.startswith("feature values beyond float32's range next to the other rows")
                   for r in features.rejected.values())
        assert np.isfinite(features.matrix.numpy()).all()
