"""A full disk, a read-only cache folder, no usable temporary folder: one `error:` line, nothing half-written
under a final name, and an earlier run (assignment, export, catalogue) in the folder left as it was.

Where this process may mount a small tmpfs (root, as in CI containers), the disk really fills up; elsewhere
those tests are skipped with the reason and the simulated ones (a writer that fails with ENOSPC) still run."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, succeeded
from typer.testing import CliRunner

from rca_gpu.cli import app

runner = CliRunner()
FEATURES_RUN = ["-p", "pca(n_components=2)+kmeans(k=3)", "--stability", "0", "--no-report", "--no-plot-umap",
                "--device", "cpu", "-q"]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or done.returncode}); the "
                    "simulated full-disk tests cover the same paths")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, check=False)
    if os.path.ismount(folder):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted after the test."""
    folder = tmp_path / "disk"
    _mount(folder, "size=4m")
    yield folder
    _unmount(folder)


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    _mount(folder, "size=1m", "ro")
    yield folder
    _unmount(folder)


def _fill(disk: Path, leave: int = 4096) -> None:
    """Take all but ``leave`` bytes of the file system's free space."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    fd = os.open(disk / "filler", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 1))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (the filler left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "filler"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name.startswith(".rca-gpu"))


@pytest.fixture(scope="module")
def features_file(tmp_path_factory) -> Path:
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(300, n_features=8, centers=3, random_state=0)
    path = tmp_path_factory.mktemp("features") / "features.npy"
    np.save(path, x.astype(np.float32))
    return path


# --------------------------------------------------------------------------------------------------
# A disk that really fills up
# --------------------------------------------------------------------------------------------------


def test_a_run_on_a_full_disk_keeps_the_earlier_run(small_disk, features_file):
    out = small_disk / "out"
    succeeded(_cli("run", "--features", features_file, "--out", out, *FEATURES_RUN))
    before = _snapshot(out)
    _fill(small_disk)
    line = one_line_error(_cli("run", "--features", features_file, "--out", out, "--seed", "3", *FEATURES_RUN),
                          "no space left on the device", "Nothing was written under that name",
                          f"The earlier run in {str(out)!r} was kept as it was")
    assert str(out) in line
    assert _snapshot(out) == before and _leftovers(out) == []
    from rca_gpu.runfolder import open_run

    open_run(out).clusters()  # still the earlier run, whole


def test_assign_export_and_causes_on_a_full_disk_keep_what_was_there(small_disk, catalogue_run, catalogue_images):
    run = small_disk / "run"
    shutil.copytree(catalogue_run, run, ignore=shutil.ignore_patterns("report_files", "report.html"))
    assigned, exported = small_disk / "assigned", small_disk / "exported"
    succeeded(_cli("assign", run, catalogue_images / "new", "--out", assigned, "--device", "cpu", "-q"))
    succeeded(_cli("export", run, "--to", exported, "--clusters", "0", "--mode", "copy", "-q"))
    before = _snapshot(small_disk)
    _fill(small_disk)
    one_line_error(_cli("assign", run, catalogue_images / "new", "--out", assigned, "--device", "cpu", "-q",
                        "--alpha", "0.2"), "no space left on the device")
    one_line_error(_cli("export", run, "--to", exported, "--clusters", "1,2", "--mode", "copy", "-q"),
                   "no space left on the device")
    one_line_error(_cli("causes", run, "--name", "0=top bar", "-q"), "no space left on the device")
    assert _snapshot(small_disk) == before and _leftovers(small_disk) == []
    assert not (exported / "cluster-1").exists() and not (run / "causes.toml").exists()


def test_a_read_only_cache_folder_is_one_error_line(read_only_folder, tmp_path, catalogue_images):
    """The run's feature cache (OUT/cache) on a read-only file system: one line naming it and --no-cache."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").symlink_to(read_only_folder, target_is_directory=True)
    args = ["run", catalogue_images / "run", "--out", out,
            "-p", "pixels(image_size=16)+pca(n_components=2)+kmeans(k=3)",
            "--stability", "0", "--no-report", "--no-plot-umap", "--device", "cpu", "--workers", "0", "-q"]
    one_line_error(_cli(*args), "the file system is read-only", "--no-cache")
    assert not (out / "run.json").exists() and _leftovers(out) == []
    succeeded(_cli(*args, "--no-cache"))


def test_no_usable_temporary_folder_is_not_needed(read_only_folder, tmp_path, features_file, monkeypatch):
    """Every output is written through a temporary name beside it, never in the temporary folder: a run, a
    report and an export work when the temporary folder cannot be written."""
    monkeypatch.setattr(tempfile, "tempdir", str(read_only_folder))
    monkeypatch.setenv("TMPDIR", str(read_only_folder))
    with pytest.raises(OSError):
        tempfile.mkstemp()  # the temporary folder is unusable indeed
    out = tmp_path / "out"
    succeeded(_cli("run", "--features", features_file, "--out", out, *FEATURES_RUN))
    succeeded(_cli("export", out, "--to", tmp_path / "exported", "-q"))


# --------------------------------------------------------------------------------------------------
# Simulated: a writer that fails with ENOSPC (runs everywhere)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_at", [2, 4, 6])
def test_a_writer_failing_with_enospc_keeps_the_earlier_run(tmp_path, features_file, monkeypatch, fail_at):
    """The ``fail_at``-th file a run writes fails as on a full disk (after half its bytes); the first two are
    the lock holders' files (their failure only leaves the holder unnamed)."""
    from rca_gpu import outputs

    out = tmp_path / "out"
    succeeded(_cli("run", "--features", features_file, "--out", out, *FEATURES_RUN))
    before = _snapshot(out)
    real = outputs.write_atomic
    calls = []

    def failing(path, write):
        calls.append(Path(path).name)
        if len(calls) - 1 != fail_at:
            return real(path, write)

        def half(tmp):
            write(tmp)
            with open(tmp, "r+b") as handle:
                handle.truncate(os.path.getsize(tmp) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

        return real(path, half)

    monkeypatch.setattr(outputs, "write_atomic", failing)
    one_line_error(_cli("run", "--features", features_file, "--out", out, "--seed", "3", *FEATURES_RUN),
                   "no space left on the device", "was kept as it was")
    assert _snapshot(out) == before and _leftovers(out) == []
