"""Reading GPU architectures from fatbin headers (rca_gpu.fatbin), on synthetic ELF files built here."""

from __future__ import annotations

import struct

import pytest

from rca_gpu.fatbin import FATBIN_MAGIC, Arch, describe, elf_sections, fatbin_entries, library_archs, runs_on


def _entry(kind: int, arch: int, payload: bytes, flags: int = 0x11) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x101, 64, len(payload))
    struct.pack_into("<I", header, 28, arch)
    struct.pack_into("<Q", header, 40, flags)
    return bytes(header) + payload


def _fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(sections: dict[str, bytes]) -> bytes:
    """A minimal 64-bit little-endian ELF with the given sections (plus the null and name sections)."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in sections) + b".shstrtab\0"
    blobs = list(sections.values()) + [names]
    data = bytearray(64)
    offsets = []
    for blob in blobs:
        offsets.append(len(data))
        data += blob
    section_offset = len(data)
    table = bytearray(64)  # the null section
    name_at = 1
    for label, blob, offset in zip(list(sections) + [".shstrtab"], blobs, offsets, strict=True):
        table += struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, offset, len(blob), 0, 0, 1, 0)
        name_at += len(label) + 1
    data[0:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<Q", data, 0x28, section_offset)
    struct.pack_into("<HHH", data, 0x3A, 64, len(blobs) + 1, len(blobs))
    return bytes(data + table)


def test_entries_of_two_fat_binaries_in_a_row():
    section = _fatbin(_entry(2, 70, b"x" * 40), _entry(2, 80, b"y" * 8)) + b"\0" * 8 + _fatbin(
        _entry(2, 90, b"z" * 16, flags=0x102011), _entry(1, 120, b"ptx")
    )
    assert fatbin_entries(section) == [Arch(70, True), Arch(80, True), Arch(90, True, True), Arch(120, False)]


def test_library_archs_reads_the_nv_fatbin_section():
    library = _elf({".text": b"\x90" * 32, ".nv_fatbin": _fatbin(_entry(2, 80, b"a" * 24), _entry(2, 70, b"b"))})
    assert set(elf_sections(library)) >= {".text", ".nv_fatbin", ".shstrtab"}
    assert library_archs(library) == [Arch(70, True), Arch(80, True)]
    assert library_archs(_elf({".text": b"\x90"})) == []  # host code only
    assert library_archs(b"not an ELF file") == []


@pytest.mark.parametrize(
    "archs, capability, expected",
    [
        ([Arch(70, True), Arch(80, True)], 90, False),  # faiss-gpu-cu12 1.14.1.post1 on an H100 / H200
        ([Arch(80, True)], 86, True),  # same major, higher minor
        ([Arch(86, True)], 80, False),  # never downwards
        ([Arch(90, True, True)], 90, True),  # sm_90a on 9.0
        ([Arch(90, True, True)], 100, False),  # ... and nowhere else
        ([Arch(80, False)], 90, True),  # PTX is compiled for newer GPUs by the driver
        ([Arch(120, False)], 90, False),
        ([], 90, False),
    ],
)
def test_what_runs_where(archs, capability, expected):
    assert runs_on(archs, capability) is expected


def test_describe():
    assert describe([Arch(90, True), Arch(75, True), Arch(120, False)]) == "sm_75, sm_90, compute_120"
    assert describe([]) == "no device code"


def test_elf_sections_of_a_real_library():
    from pathlib import Path

    from scipy.linalg import _fblas as compiled  # any compiled extension installed here

    sections = elf_sections(Path(compiled.__file__).read_bytes())
    assert {".text", ".dynsym", ".shstrtab"} <= set(sections)
    assert len(sections[".text"]) > 1000
