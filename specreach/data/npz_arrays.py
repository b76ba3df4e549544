"""Arrays of an ``.npz`` archive read without loading them: headers, and memory maps where possible.

``numpy.load(path, mmap_mode="r")`` cannot memory-map the members of an ``.npz`` (a zip
archive): it reads each requested member whole. But a member stored without compression
(``numpy.savez``, as the CIFAR-5M parts are) is a plain ``.npy`` file at some offset inside the
archive, so it can be memory-mapped there. :func:`npz_member` reads a member's header (shape,
dtype) cheaply and returns a memory map for a stored member, or ``None`` for a compressed one
(``numpy.savez_compressed``), which the caller then loads whole with ``numpy.load``.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A zip local file header (30 bytes; the layout of zipfile.structFileHeader), then name and extra field.
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class NpzMember:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int | None  # byte offset of the array data in the archive; None when compressed


def npz_names(path: Path) -> list[str]:
    """The array names in an .npz archive (``ValueError`` if it is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist() if name.endswith(".npy")]
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy files): {error}") from error


def npz_member(path: Path, name: str) -> NpzMember:
    """Header and location of the array ``name`` (``ValueError`` if absent or unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                entry = archive.getinfo(f"{name}.npy")
            except KeyError:
                raise ValueError(f"{path} has no array '{name}' (it holds {npz_names(path)})") from None
            with archive.open(entry) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
                header_size = member.tell()
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy files): {error}") from error
    if entry.compress_type != zipfile.ZIP_STORED:
        return NpzMember(shape, dtype, fortran_order, None)
    with open(path, "rb") as archive_file:
        archive_file.seek(entry.header_offset)
        fields = LOCAL_HEADER.unpack(archive_file.read(LOCAL_HEADER.size))
    if fields[0] != LOCAL_HEADER_SIGNATURE:
        raise ValueError(f"{path}: corrupt zip entry for '{name}'")
    name_length, extra_length = fields[-2], fields[-1]
    data_offset = entry.header_offset + LOCAL_HEADER.size + name_length + extra_length + header_size
    return NpzMember(shape, dtype, fortran_order, data_offset)


def npz_array(path: Path, name: str, member: NpzMember) -> np.ndarray:
    """The array: a read-only memory map when stored uncompressed, else loaded into memory."""
    if member.data_offset is None:
        with np.load(path) as archive:
            return archive[name]
    if 0 in member.shape:  # mmap cannot map zero bytes
        return np.empty(member.shape, dtype=member.dtype)
    return np.memmap(path, dtype=member.dtype, mode="r", offset=member.data_offset, shape=member.shape,
                     order="F" if member.fortran_order else "C")
