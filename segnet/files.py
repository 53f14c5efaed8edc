"""Writing outputs atomically, so that no reader ever sees half a file or half a folder.

A file is written under a unique temporary name in its own folder (two writers never share one), flushed
to disk, then renamed over the real name: a crash leaves the old file or the new one, never a mix. A
folder of outputs is built in a staging folder beside it and swapped in whole once complete. And the hash
that names what a file holds, recorded with the runs that read or write it.
"""

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any threads write files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync(path: Path) -> None:
    """Flushes a file, or a folder's list of names, from the OS cache to disk."""
    if os.name != "posix" and path.is_dir():
        return  # only POSIX can open a folder to flush it
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls write(temporary) for a new temporary file beside `path`, flushes it and renames it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # `name.<random>`: torch.save names the archive inside its file after the file name less its last suffix,
    # so this keeps it `name` and the bytes the same whatever the random part (reruns stay byte-identical).
    descriptor, name = tempfile.mkstemp(prefix=f"{path.name}.", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        # mkstemp makes the file private (0600); outputs get the mode a plain open() would give them.
        os.chmod(temporary, 0o666 & ~_UMASK)
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Writes bytes to path atomically."""
    _replace_atomically(path, lambda temporary: temporary.write_bytes(data))


def write_json(path: Path, value) -> None:
    """Writes a JSON document (indented, keys in insertion order) atomically."""
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Saves an array as .npy (no pickle) atomically."""

    def write(temporary: Path) -> None:
        # Through a file object: given a path, np.save would append ".npy" to the temporary name.
        with open(temporary, "wb") as file:
            np.save(file, array, allow_pickle=False)

    _replace_atomically(path, write)


class NpyWriter:
    """A .npy file written block by block along its first axis, so an array larger than memory can be saved.

    The header is written first with room for any length and rewritten with the final length on close,
    so the file is a plain .npy that np.load reads (and memory-maps). Not atomic by itself: write it inside
    a staged_directory, which is.
    """

    # Magic, version, header length and the header dict padded to 128 bytes: a multiple of 64 (numpy's
    # alignment), with room for any count of rows.
    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: npt.DTypeLike, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - open until close() or discard(), across calls
        self._file.write(self._header())

    def append(self, block: np.ndarray) -> None:
        """Appends rows; `block` must have this file's dtype and row shape."""
        if block.dtype != self.dtype or block.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path}: a block of {block.dtype} {block.shape[1:]} rows, expected {self.dtype} {self.row_shape}"
            )
        self._file.write(np.ascontiguousarray(block).data)
        self.rows += len(block)

    def close(self) -> None:
        """Writes the final header and flushes the file to disk."""
        self._file.seek(0)
        self._file.write(self._header())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        """Closes and deletes an unfinished file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def _header(self) -> bytes:
        fields = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        text = repr(fields).encode("latin1")
        if len(text) > self.HEADER_BYTES - 11:  # rewriting a longer header at close would overwrite data
            raise ValueError(f"{self.path}: a .npy header for {fields} does not fit in {self.HEADER_BYTES} bytes")
        text = text.ljust(self.HEADER_BYTES - 11) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def save_torch(path: Path, value) -> None:
    """Saves tensors (a state dict) with torch.save atomically."""
    import torch  # here, not at the top: the generate and prepare stages import this module and never need torch

    _replace_atomically(path, lambda temporary: torch.save(value, temporary))


def check_replaceable(path: Path, names: frozenset[str]) -> None:
    """Refuses an existing `path` that staged_directory would replace, deleting what is there, unless all it
    holds are files of the given `names`, the ones the stage writes: a file, or a folder holding anything else.

    A stage run by hand with its arguments in the wrong order, or pointed at a folder of the user's own,
    would otherwise delete what is there. An empty folder is accepted.

    Raises:
        ValueError: Naming `path` and what is in the way.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise ValueError(f"{path}: is a file, where an output folder goes; refusing to replace it")
    others = sorted(set(os.listdir(path)) - names)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(
            f"{path}: holds {shown}, which this stage does not write; refusing to replace the folder "
            "and delete them: name a new or an empty folder"
        )


@contextlib.contextmanager
def staged_directory(path: Path, names: frozenset[str]) -> Iterator[Path]:
    """Yields an empty staging folder beside `path` that takes the place of `path` when the block succeeds.

    The block writes the whole new folder into the staging folder, with this module's writers (they
    flush each file to disk). If it raises, or the process is killed, `path` stays exactly as it was
    (absent, or the previous complete folder). A staging folder left behind by a killed process is
    removed by the next call for the same `path` on this machine.

    Args:
        path: The output folder to replace.
        names: The files the block may write. An existing `path` holding anything else is refused before
            anything is written (check_replaceable).

    Yields:
        The staging folder, on the same filesystem as `path`.
    """
    path = Path(path)
    check_replaceable(path, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        # mkdtemp makes the folder private (0700); the output gets the mode a plain mkdir would give it.
        os.chmod(staging, 0o777 & ~_UMASK)
        yield staging
        unexpected = sorted(set(os.listdir(staging)) - names)
        if unexpected:  # the next run would refuse to replace the folder
            raise RuntimeError(f"{path}: the new output holds {', '.join(unexpected)}, not among {sorted(names)}")
        _fsync(staging)
        _swap_into_place(staging, path)
        _fsync(path.parent)
    finally:
        # After a swap the staging name holds the previous output; after a failure, the unfinished one.
        _remove(staging)


def _staging_prefix(path: Path) -> str:
    return f".{path.name}.staging-"


def _remove_abandoned_staging(path: Path) -> None:
    """Deletes staging folders of `path` whose writer (the pid in their name) no longer runs."""
    prefix = _staging_prefix(path)
    for candidate in path.parent.glob(f"{prefix}*"):
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _is_running(int(pid)):
            _remove(candidate)


def _remove(path: Path) -> None:
    """Deletes a folder tree, a file or a link, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    if os.name != "posix":
        return True  # Windows' os.kill would end the process; not knowing, leave its folder alone
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # PermissionError: another user's process
    return True


def _swap_into_place(staging: Path, path: Path) -> None:
    """Puts `staging` at `path`; an existing `path` moves to the staging name in the same atomic step."""
    if not os.path.lexists(path):
        os.rename(staging, path)
    elif not _exchange(staging, path):
        # Without an atomic exchange, `path` is absent for the moment between two renames (never partial).
        parked = staging.with_name(staging.name + "-previous")
        os.rename(path, parked)
        os.rename(staging, path)
        os.rename(parked, staging)


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two paths in one step with Linux's renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_current_folder, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h>, <linux/fs.h>
    if renameat2(at_current_folder, os.fsencode(first), at_current_folder, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a kernel or filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(second))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Returns the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
