"""Which GPU architectures a shared library carries machine code (SASS) or PTX for, read from its fatbins.

nvcc embeds device code in an ELF section ``.nv_fatbin`` as a run of fat binaries. Each starts with a
16-byte header (magic 0xBA55ED50, version, header size, size of what follows) and holds entries, one per
architecture, each with its own header: kind (1 = PTX, 2 = ELF/SASS), the architecture as a number
(90 = sm_90), flags, and the size of its payload. This is what ``cuobjdump --list-elf / --list-ptx``
prints; reading the headers needs no CUDA toolkit and no GPU, so ``rca-gpu doctor`` and
scripts/check_wheel_archs.py can tell whether an installed or downloaded library can run on a GPU.

Flags 0x100000 / 0x200000 in an entry mark architecture-specific variants (``sm_90a``, ``sm_100f``), whose
code runs only on that exact architecture (or family); they are treated as exact matches only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

FATBIN_MAGIC = 0xBA55ED50
FATBIN_SECTIONS = (".nv_fatbin", "__nv_relfatbin")
KIND_PTX, KIND_SASS = 1, 2
#: Entry flags that mark an architecture-specific ("a") or family ("f") variant.
VARIANT_FLAGS = 0x100000 | 0x200000


@dataclass(frozen=True, order=True)
class Arch:
    """One entry of a fatbin: machine code (``sass``) or PTX for compute capability ``arch`` (e.g. 90)."""

    arch: int
    sass: bool
    variant: bool = False  # sm_90a / sm_100f: runs on that architecture only

    def __str__(self) -> str:
        return f"{'sm' if self.sass else 'compute'}_{self.arch}{'a/f' if self.variant else ''}"

    def runs_on(self, capability: int) -> bool:
        """Whether this code runs on a GPU of compute capability ``capability`` (e.g. 90 for 9.0).

        Machine code runs on the same major architecture at an equal or higher minor (sm_80 on 8.6, not on
        9.0); a variant only on its own architecture; PTX on any equal or higher capability, compiled by
        the driver when first loaded.
        """
        if not self.sass:
            return capability >= self.arch
        if self.variant:
            return capability == self.arch
        return capability // 10 == self.arch // 10 and capability >= self.arch


def fatbin_entries(data: bytes) -> list[Arch]:
    """The entries of every fat binary in ``data`` (the bytes of a .nv_fatbin section), in order."""
    out: list[Arch] = []
    offset = 0
    while True:
        start = data.find(struct.pack("<I", FATBIN_MAGIC), offset)
        if start < 0 or start + 16 > len(data):
            return out
        _, _, header_size, body_size = struct.unpack_from("<IHHQ", data, start)
        position, end = start + header_size, min(len(data), start + header_size + body_size)
        while position + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, position)
            arch = struct.unpack_from("<I", data, position + 28)[0]
            flags = struct.unpack_from("<Q", data, position + 40)[0] if position + 48 <= end else 0
            if entry_header < 32 or kind not in (KIND_PTX, KIND_SASS):
                break  # not an entry header: stop reading this fat binary
            out.append(Arch(int(arch), kind == KIND_SASS, bool(flags & VARIANT_FLAGS)))
            position += entry_header + payload
        offset = max(end, start + 4)


def elf_sections(data: bytes) -> dict[str, bytes]:
    """Name -> contents of the sections of a 64-bit little-endian ELF file (what shared libraries are)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for i in range(count):
        name, kind, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, section_offset + i * entry_size)
        headers.append((name, kind, offset, size))
    _, _, names_offset, names_size = headers[names_index]
    names = data[names_offset : names_offset + names_size]
    out = {}
    for name, kind, offset, size in headers:
        label = names[name : names.index(b"\0", name)].decode("ascii", "replace")
        out[label] = b"" if kind == 8 else data[offset : offset + size]  # 8 = SHT_NOBITS: no bytes in the file
    return out


def library_archs(data: bytes) -> list[Arch]:
    """Distinct architectures a shared library's fatbins hold code for (empty: no device code)."""
    try:
        sections = elf_sections(data)
    except (ValueError, struct.error):
        return []
    found: set[Arch] = set()
    for name in FATBIN_SECTIONS:
        found.update(fatbin_entries(sections.get(name, b"")))
    return sorted(found)


def runs_on(archs: Iterable[Arch], capability: int) -> bool:
    """Whether any of ``archs`` can run on a GPU of ``capability`` (e.g. 90)."""
    return any(a.runs_on(capability) for a in archs)


def describe(archs: Iterable[Arch]) -> str:
    archs = sorted(archs)
    return ", ".join(str(a) for a in archs) if archs else "no device code"
