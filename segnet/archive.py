"""Reading a multi-digit MNIST zip safely: member names are checked, nothing is extracted to disk.

Members are read into memory one at a time, so no entry can write anywhere, yet entries that would
land outside an extraction folder (`../x`, absolute paths, drive letters) or that are links are
refused outright: an archive holding them is not one we trust.
"""

import hashlib
import lzma
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segnet.errors import DatasetError

TRAIN_PATTERN = re.compile(r"^batch(\d+)\.mat$")
TEST_PATTERN = re.compile(r"^testset(\d+)\.mat$")


@dataclass(frozen=True)
class ArchiveIndex:
    """The .mat members of an archive, split and in numeric order."""

    train: list[str]
    test: list[str]
    ignored: list[str]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Returns the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def open_archive(path: Path) -> zipfile.ZipFile:
    """Opens a zip for reading, with a clear error when it is missing or not a zip."""
    if not path.exists():
        raise DatasetError(f"{path}: archive not found (set data.archive in params.yaml)")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{path}: not a zip archive ({error})") from error


def index_archive(archive: zipfile.ZipFile, source: str) -> ArchiveIndex:
    """Checks every member name and finds the training and test .mat files.

    Files may sit at the top, under `multi-digit-mnist/` or under `data/multi-digit-mnist/`;
    only the base name matters. `__MACOSX/` entries and folders are ignored.

    Raises:
        DatasetError: An unsafe member, two members with the same base name, or no training or
            no test files.
    """
    train, test, ignored = {}, {}, []
    for info in archive.infolist():
        name = info.filename
        _check_member_is_safe(info, source)
        path = PurePosixPath(name)
        if info.is_dir() or path.parts[0] == "__MACOSX" or path.name.startswith("._"):
            continue
        for pattern, found in ((TRAIN_PATTERN, train), (TEST_PATTERN, test)):
            match = pattern.match(path.name)
            if match:
                if path.name in found:
                    raise DatasetError(f"{source}: '{path.name}' appears twice ({found[path.name]} and {name})")
                found[path.name] = name
                break
        else:
            ignored.append(name)
    if not train:
        raise DatasetError(f"{source}: no training files (batch*.mat) in the archive")
    if not test:
        raise DatasetError(f"{source}: no test files (testset*.mat) in the archive")

    def numeric_order(found: dict[str, str], pattern: re.Pattern) -> list[str]:
        return [found[key] for key in sorted(found, key=lambda key: (int(pattern.match(key).group(1)), key))]

    return ArchiveIndex(numeric_order(train, TRAIN_PATTERN), numeric_order(test, TEST_PATTERN), ignored)


def _check_member_is_safe(info: zipfile.ZipInfo, source: str) -> None:
    name = info.filename
    where = f"{source}:{name}"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise DatasetError(f"{where}: absolute path in the archive; refusing to read it")
    if ".." in PurePosixPath(normalized).parts:
        raise DatasetError(f"{where}: path leads outside the extraction folder ('..'); refusing to read it")
    unix_mode = info.external_attr >> 16
    if stat.S_ISLNK(unix_mode):
        raise DatasetError(f"{where}: symbolic link in the archive; refusing to read it")
    if info.flag_bits & 0x1:
        raise DatasetError(f"{where}: encrypted entry; the archive must not be password-protected")


def read_member(archive: zipfile.ZipFile, name: str, source: str) -> bytes:
    """Reads one member's bytes, turning zip-level failures into DatasetError."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        raise DatasetError(f"{source}:{name}: cannot be read from the archive ({error})") from error
