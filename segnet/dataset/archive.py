"""Reading a multi-digit MNIST zip safely: member names and sizes are checked, nothing is extracted to disk.

Members are read into memory one at a time, so no entry can write anywhere, yet entries that would
land outside an extraction folder (`../x`, absolute paths, drive letters) or that are links are
refused outright: an archive holding them is not one we trust. So is one that would inflate beyond
ArchiveLimits (a zip bomb): the sizes the central directory declares are checked before anything is
read, and a member is read in chunks that stop as soon as it yields more than it declared.
"""

import lzma
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segnet.errors import DatasetError

# Any case: archives made on Windows or macOS can carry Batch00001.mat or testset001.MAT.
TRAIN_PATTERN = re.compile(r"^batch(\d+)\.mat$", re.IGNORECASE)
TEST_PATTERN = re.compile(r"^testset(\d+)\.mat$", re.IGNORECASE)
_CHUNK_BYTES = 1 << 20
# zipfile inflates bzip2 and LZMA input in whole chunks with no bound on the output (bzip2 reaches
# 885,000:1), so only these methods can be read with the limits kept.
_BOUNDED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "deflate64"}
# What zipfile raises for a damaged archive (found by fuzzing, tests/test_fuzz.py): its central directory
# can name an unknown zip version (NotImplementedError), undecodable UTF-8 names (ValueError) or offsets
# before the file's start (OSError).
_OPEN_ERRORS = (zipfile.BadZipFile, NotImplementedError, ValueError, OSError, EOFError, struct.error)
# What reading a damaged member can raise from zipfile and its decompressors.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may inflate; anything beyond is refused as a possible zip bomb.

    params.yaml's `data` section sets them; its values accept the full course release (1,000 files of 500
    panels, 33-41 MB each uncompressed, 33-41 GB in all) with room to spare.

    Attributes:
        max_total_bytes: Uncompressed bytes of all members together.
        max_member_bytes: Uncompressed bytes of one member, and of one .mat file once the variables
            compressed inside it are inflated.
        max_compression_ratio: Uncompressed size over compressed size of one member.
    """

    max_total_bytes: int
    max_member_bytes: int
    max_compression_ratio: float

    def __post_init__(self):
        for name in ("max_total_bytes", "max_member_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a whole number of bytes >= 1, got {value!r}")
        ratio = self.max_compression_ratio
        # A stored (uncompressed) member has ratio 1, so a limit below 1 would refuse every archive.
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
            raise ValueError(f"max_compression_ratio: must be a number >= 1, got {ratio!r}")


@dataclass(frozen=True)
class ArchiveIndex:
    """The .mat members of an archive, split and in numeric order."""

    train: list[str]
    test: list[str]
    ignored: list[str]


def open_archive(path: Path) -> zipfile.ZipFile:
    """Opens a zip for reading, with a clear error when it is missing or not a zip."""
    if not path.exists():
        raise DatasetError(f"{path}: archive not found (set data.archive in params.yaml)")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    try:
        return zipfile.ZipFile(path)
    except _OPEN_ERRORS as error:
        raise DatasetError(f"{path}: not a zip archive, or a damaged one ({type(error).__name__}: {error})") from error


def index_archive(archive: zipfile.ZipFile, source: str, *, limits: ArchiveLimits) -> ArchiveIndex:
    """Checks every member's name and declared size and finds the training and test .mat files.

    Files may sit at the top, under `multi-digit-mnist/` or under `data/multi-digit-mnist/`;
    only the base name matters, in any case, and `\\` separates folders as `/` does (zips made by
    Windows tools). `__MACOSX/` entries and folders are ignored.

    Raises:
        DatasetError: An unsafe member, a member or archive that declares more than `limits` allow,
            two members with the same base name, or no training or no test files.
    """
    train: dict[str, str] = {}  # base name, lower case -> member name
    test: dict[str, str] = {}
    ignored: list[str] = []
    numeric_order: dict[str, tuple[int, str]] = {}  # base name -> sort key: the file's number, then its name
    total = 0
    for info in archive.infolist():
        name = info.filename
        _check_member_is_safe(info, source)
        _check_inflation(info, source, limits)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DatasetError(
                f"{source}:{name}: the members up to this one declare {total:,} bytes uncompressed, more than "
                f"data.max_total_bytes={limits.max_total_bytes:,}; refusing to read the archive (a zip bomb?)"
            )
        path = PurePosixPath(name.replace("\\", "/"))
        if info.is_dir() or path.parts[0] == "__MACOSX" or path.name.startswith("._"):
            continue
        key = path.name.lower()
        for pattern, found in ((TRAIN_PATTERN, train), (TEST_PATTERN, test)):
            if match := pattern.match(key):
                if key in found:
                    raise DatasetError(f"{source}: '{path.name}' appears twice ({found[key]} and {name})")
                found[key] = name
                numeric_order[key] = (int(match.group(1)), key)
                break
        else:
            ignored.append(name)
    if not train:
        raise DatasetError(f"{source}: no training files (batch*.mat) in the archive{_listing(ignored)}")
    if not test:
        raise DatasetError(f"{source}: no test files (testset*.mat) in the archive{_listing(ignored)}")

    def in_order(found: dict[str, str]) -> list[str]:
        return [found[key] for key in sorted(found, key=numeric_order.__getitem__)]

    return ArchiveIndex(in_order(train), in_order(test), ignored)


def _listing(ignored: list[str], shown: int = 5) -> str:
    """What the archive holds instead, for an error that finds no files: the names show a misnaming at once."""
    if not ignored:
        return ""
    more = f" and {len(ignored) - shown} more" if len(ignored) > shown else ""
    count = f"{len(ignored)} of its files are" if len(ignored) > 1 else "1 of its files is"
    return f"; {count} neither batch*.mat nor testset*.mat: " + ", ".join(repr(name) for name in ignored[:shown]) + more


def _check_member_is_safe(info: zipfile.ZipInfo, source: str) -> None:
    name = info.filename
    where = f"{source}:{name}"
    normalized = name.replace("\\", "/")
    if not PurePosixPath(normalized).parts:  # "" or ".": found by fuzzing, tests/test_fuzz.py
        raise DatasetError(f"{where}: member without a file name; refusing to read it")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise DatasetError(f"{where}: absolute path in the archive; refusing to read it")
    if ".." in PurePosixPath(normalized).parts:
        raise DatasetError(f"{where}: path leads outside the extraction folder ('..'); refusing to read it")
    unix_mode = info.external_attr >> 16
    if stat.S_ISLNK(unix_mode):
        raise DatasetError(f"{where}: symbolic link in the archive; refusing to read it")
    if info.flag_bits & 0x1:
        raise DatasetError(f"{where}: encrypted entry; the archive must not be password-protected")


def _check_inflation(info: zipfile.ZipInfo, source: str, limits: ArchiveLimits) -> None:
    """Checks the compression method and the sizes the central directory declares against the limits."""
    where = f"{source}:{info.filename}"
    if info.compress_type not in _BOUNDED_METHODS:
        raise DatasetError(
            f"{where}: compressed with {_METHOD_NAMES.get(info.compress_type, f'method {info.compress_type}')}, "
            "which cannot be read within the size limits; re-create the zip with deflate (zip's default)"
        )
    if info.file_size > limits.max_member_bytes:
        raise DatasetError(
            f"{where}: declares {info.file_size:,} bytes uncompressed, more than "
            f"data.max_member_bytes={limits.max_member_bytes:,}; refusing to read it (a zip bomb?)"
        )
    if info.file_size > limits.max_compression_ratio * info.compress_size:
        ratio = info.file_size / info.compress_size if info.compress_size else float("inf")
        raise DatasetError(
            f"{where}: inflates {ratio:,.0f} times ({info.compress_size:,} -> {info.file_size:,} bytes), more than "
            f"data.max_compression_ratio={limits.max_compression_ratio:g}; refusing to read it (a zip bomb?)"
        )


def read_member(archive: zipfile.ZipFile, name: str, source: str, *, limits: ArchiveLimits) -> bytes:
    """Reads one member's bytes in chunks, stopping once it yields more than its header declares.

    Raises:
        DatasetError: The member is missing, declares more than `limits` allow, inflates beyond its
            declared size, or cannot be decompressed; the message names the archive and the member.
    """
    where = f"{source}:{name}"
    try:
        info = archive.getinfo(name)
    except KeyError as error:
        raise DatasetError(f"{where}: no such member in the archive") from error
    _check_inflation(info, source, limits)
    chunks, size = [], 0
    try:
        with archive.open(info) as member:
            # One byte more than declared is asked for, so a member that holds more shows itself. (CPython's zipfile
            # also stops at the declared size and then fails the CRC; this bound does not rely on that.)
            while chunk := member.read(min(_CHUNK_BYTES, info.file_size - size + 1)):
                size += len(chunk)
                if size > info.file_size:
                    raise DatasetError(
                        f"{where}: inflates to more than the {info.file_size:,} bytes its header declares; "
                        "refusing to read further (a zip bomb?)"
                    )
                chunks.append(chunk)
    except _READ_ERRORS as error:
        raise DatasetError(f"{where}: cannot be read from the archive ({error})") from error
    return b"".join(chunks)
