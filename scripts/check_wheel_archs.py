"""List the GPU architectures each shared library in a wheel carries code for; fail if one cannot run on a GPU.

    python scripts/check_wheel_archs.py faiss-gpu-cu12-cuvs==1.15.0 libcuvs-cu12==26.10.0 --capability 90
    python scripts/check_wheel_archs.py path/to/some.whl path/to/libfoo.so --capability 90

Arguments that are not files are downloaded with ``pip download --no-deps`` (binary wheels for
--python-version and the manylinux x86_64 platforms) into --dest. Reads the ``.nv_fatbin`` headers of every
ELF shared library in the wheel (rca_gpu.fatbin: what ``cuobjdump --list-elf/--list-ptx`` shows) and prints
one line per library with device code. Exit status 1 when a library with device code has neither machine
code for the capability's architecture nor PTX it can be compiled from, 0 otherwise. No GPU needed.
The results for the wheels rca-gpu installs are recorded in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rca_gpu.fatbin import describe, library_archs, runs_on  # noqa: E402

PLATFORMS = ("manylinux_2_39_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download(spec: str, dest: Path, python_version: str) -> Path:
    before = set(dest.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(dest), spec]
    for platform in PLATFORMS:
        command[-1:-1] = ["--platform", platform]
    subprocess.run(command, check=True)
    new = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    return new[-1]


def libraries(path: Path):
    """(member name, bytes) of every shared library in a wheel, or the file itself."""
    if path.suffix != ".whl":
        yield path.name, path.read_bytes()
        return
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if ".so" in name and not info.is_dir():
                yield info.filename, wheel.read(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", help="wheel or .so files, or requirement specs to download")
    parser.add_argument("--capability", type=int, default=90, help="compute capability as a number (90 = 9.0)")
    parser.add_argument("--python-version", default="3.12", help="for downloads (default 3.12)")
    parser.add_argument("--dest", type=Path, default=None, help="download folder (default: a temporary one)")
    args = parser.parse_args(argv)

    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        dest = args.dest or Path(scratch)
        dest.mkdir(parents=True, exist_ok=True)
        for item in args.items:
            path = Path(item) if Path(item).is_file() else download(item, dest, args.python_version)
            print(f"{path.name}")
            with_code = 0
            for member, data in libraries(path):
                archs = library_archs(data)
                if not archs:
                    continue
                with_code += 1
                ok = runs_on(archs, args.capability)
                print(f"  {member}: {describe(archs)} -> {'runs' if ok else 'CANNOT run'} on sm_{args.capability}")
                if not ok:
                    failed.append(f"{path.name}:{member}")
            if not with_code:
                print("  no library with device code")
    if failed:
        print(f"no code for sm_{args.capability} in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
