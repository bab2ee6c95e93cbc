"""The saved backend's file: magic, the payload sections (arrays, or a FAISS index streamed through FAISS's own
writer), a JSON header at the end and a trailer (header length, magic again).

The payload carries a CRC-32 that is checked before FAISS parses a byte of it (FAISS's reader is not hardened
against damaged input); from version 2 the header carries a checksum of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Collection

import numpy as np

from ....errors import LookalikeError
from .faiss_lib import faiss_module

FILE_VERSION = 2  # 2: the header carries a checksum of its own (`header_crc32`); 1 is read, and rebuilt by a writer
_READABLE_VERSIONS = (1, 2)
_MAGIC = b"LKANN01\n"
_TRAILER = struct.Struct("<Q8s")  # header length, magic again: the header sits at the end of the file
_CHUNK = 1 << 24  # bytes per read while checking the CRC


class AnnFileError(LookalikeError):
    """The saved ANN file is missing, damaged or of another version: rebuild it from the vectors."""


class StaleAnnError(AnnFileError):
    """The saved ANN file was built from other vectors than the index holds now: rebuild it."""


def header_crc(header: dict) -> int:
    """CRC-32 of the header's fields other than this one: entry counts, sections and the fingerprint are
    checked like the payload, so an edited header is damage, not a different structure."""
    rest = {k: v for k, v in header.items() if k != "header_crc32"}
    return zlib.crc32(json.dumps(rest, sort_keys=True).encode())


def write_file(path: Path, sections: list[tuple[str, Any]], fields: dict, atomic: bool = True) -> int:
    """Write `sections` (name, array or FAISS index) and a header of `fields` plus the section table and
    checksums to `path`; returns the file's size. `atomic`: through a temporary file renamed into place; else
    `path` itself is created and fsynced."""
    from ....atomic import atomic_path

    with (atomic_path(path) if atomic else contextlib.nullcontext(path)) as tmp, open(tmp, "wb") as fh:
        crc = 0
        table = []

        def write(data) -> None:
            nonlocal crc
            mv = memoryview(data).cast("B")
            crc = zlib.crc32(mv, crc)
            fh.write(mv)

        fh.write(_MAGIC)
        for name, value in sections:
            start = fh.tell()
            if isinstance(value, np.ndarray):
                arr = np.ascontiguousarray(value)
                write(arr)
                table.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                              "offset": start, "nbytes": fh.tell() - start})
            else:  # a FAISS index, streamed
                faiss = faiss_module()
                writer = faiss.PyCallbackIOWriter(lambda b: write(b) or len(b))
                faiss.write_index(value, writer)
                del writer
                table.append({"name": name, "faiss": True, "offset": start, "nbytes": fh.tell() - start})
        header = {"version": FILE_VERSION, **fields, "sections": table, "crc32": crc, "payload_end": fh.tell()}
        header["header_crc32"] = header_crc(header)
        raw = json.dumps(header, sort_keys=True).encode()
        fh.write(raw)
        fh.write(_TRAILER.pack(len(raw), _MAGIC))
        size = fh.tell()
        if not atomic:
            fh.flush()
            os.fsync(fh.fileno())
    return size


def read_header(fh: BinaryIO, path: Path, kinds: Collection[str]) -> dict:
    """The header after checking the magic, the trailer, the version, the header's own checksum and that its
    kind is one of `kinds`."""
    fh.seek(0, 2)
    size = fh.tell()
    if size < len(_MAGIC) + _TRAILER.size:
        raise AnnFileError(f"ANN file {path} is truncated")
    fh.seek(0)
    if fh.read(len(_MAGIC)) != _MAGIC:
        raise AnnFileError(f"{path} is not a Lookalike ANN file")
    fh.seek(size - _TRAILER.size)
    hlen, magic = _TRAILER.unpack(fh.read(_TRAILER.size))
    if magic != _MAGIC or hlen > size - len(_MAGIC) - _TRAILER.size:
        raise AnnFileError(f"ANN file {path} is truncated or damaged")
    fh.seek(size - _TRAILER.size - hlen)
    try:
        header = json.loads(fh.read(hlen))
    except ValueError:
        raise AnnFileError(f"ANN file {path} has a damaged header") from None
    if not isinstance(header, dict) or header.get("version") not in _READABLE_VERSIONS:
        raise AnnFileError(f"ANN file {path} has an unknown version")
    if header["version"] >= 2 and header.get("header_crc32") != header_crc(header):
        raise AnnFileError(f"ANN file {path} has a damaged header (checksum mismatch)")
    if header.get("payload_end") != size - _TRAILER.size - hlen or header.get("kind") not in kinds:
        raise AnnFileError(f"ANN file {path} is damaged")
    return header


def check_crc(fh: BinaryIO, header: dict, path: Path) -> None:
    """AnnFileError unless the payload matches the header's CRC-32."""
    end = header["payload_end"]
    fh.seek(len(_MAGIC))
    crc, left = 0, end - len(_MAGIC)
    while left > 0:
        chunk = fh.read(min(_CHUNK, left))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    if left or crc != header.get("crc32"):
        raise AnnFileError(f"ANN file {path} is damaged (checksum mismatch)")


def read_sections(fh: BinaryIO, header: dict, path: Path) -> dict[str, Any]:
    """The payload's sections by name (arrays, FAISS indexes), each checked against the header's table; call
    after `check_crc`."""
    end = header["payload_end"]
    sections: dict[str, Any] = {}
    try:
        for sec in header["sections"]:
            off, nbytes = int(sec["offset"]), int(sec["nbytes"])
            if off < len(_MAGIC) or off + nbytes > end:
                raise AnnFileError(f"ANN file {path} is damaged (section out of bounds)")
            fh.seek(off)
            if sec.get("faiss"):
                sections[sec["name"]] = _read_faiss(fh, nbytes)
            else:
                dtype = np.dtype(sec["dtype"])
                if dtype.hasobject:
                    raise AnnFileError(f"ANN file {path} is damaged (object section)")
                shape = tuple(int(s) for s in sec["shape"])
                if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
                    raise AnnFileError(f"ANN file {path} is damaged (section size)")
                sections[sec["name"]] = np.frombuffer(fh.read(nbytes), dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnFileError(f"ANN file {path} is damaged ({exc.__class__.__name__})") from None
    except RuntimeError as exc:  # FAISS's own checks
        raise AnnFileError(f"ANN file {path} is damaged ({str(exc).splitlines()[0][:120]})") from None
    return sections


def _read_faiss(fh: BinaryIO, nbytes: int):
    faiss = faiss_module()
    left = [nbytes]

    def read(n: int) -> bytes:
        n = min(n, left[0])
        data = fh.read(n)
        left[0] -= len(data)
        return data

    reader = faiss.PyCallbackIOReader(read)
    index = faiss.read_index(reader)
    del reader
    return index
