import os
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch

from segnet.files import NpyWriter, save_npy, save_torch, staged_directory, write_bytes, write_json


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The files a test's staged folder may hold.
NAMES = frozenset({"a.bin", "b.bin"})


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writers_replace_the_file_and_leave_nothing_else(tmp_path):
    write_bytes(tmp_path / "a.bin", b"old")
    write_bytes(tmp_path / "a.bin", b"new")
    write_json(tmp_path / "b.json", {"x": 1})
    save_npy(tmp_path / "c.npy", np.arange(3))
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}\n'
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.npy"]
    # The temporary file is private while written; the result has the mode a plain open() gives.
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    save_npy(tmp_path / "a.npy", np.arange(3))
    with pytest.raises(ValueError, match="pickle"):
        save_npy(tmp_path / "a.npy", np.array([object()], dtype=object))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_concurrent_writers_never_mix_their_bytes(tmp_path):
    # With one shared temporary name, one writer's rename could publish another's half-written file.
    contents = [bytes([index]) * (1 << 20) for index in range(6)]
    errors = []

    def write_often(data: bytes) -> None:
        try:
            for _ in range(10):
                write_bytes(tmp_path / "shared.bin", data)
        except OSError as error:  # a thread's exception would otherwise only be printed
            errors.append(error)

    threads = [threading.Thread(target=write_often, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (tmp_path / "shared.bin").read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_staged_directory_replaces_the_whole_folder_at_once(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out, NAMES) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.staging-") and not out.exists()
        write_bytes(staging / "a.bin", b"first")
        write_bytes(staging / "b.bin", b"first")
    assert _tree(out) == {"a.bin": b"first", "b.bin": b"first"}
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()
    with staged_directory(out, NAMES) as staging:
        write_bytes(staging / "a.bin", b"second")
        assert _tree(out) == {"a.bin": b"first", "b.bin": b"first"}  # untouched until the block ends
    assert _tree(out) == {"a.bin": b"second"}  # b.bin belonged to the replaced folder
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failing_block_leaves_the_previous_folder_exactly_as_it_was(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out, NAMES) as staging:
        write_bytes(staging / "a.bin", b"good")
    before = _tree(out)
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_directory(out, NAMES) as staging:
            write_bytes(staging / "a.bin", b"half")
            raise RuntimeError("disk full")
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("existing", ["a file", "a folder of other files", "the stage's files and others"])
def test_what_is_not_an_earlier_output_is_refused_and_kept(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "a file":
        out.write_bytes(b"mine")
        message = "out: is a file, where an output folder goes; refusing to replace it"
    else:
        (out / "notes").mkdir(parents=True)
        (out / "notes" / "todo.txt").write_bytes(b"mine")
        for name in ("c.txt", "d.txt", "e.txt") if existing == "a folder of other files" else ("a.bin",):
            (out / name).write_bytes(b"mine")  # the stage's own name does not make the others its own
        shown = "c.txt, d.txt, e.txt and 1 more" if existing == "a folder of other files" else "notes"
        message = f"out: holds {shown}, which this stage does not write; refusing to replace the folder"
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=message):
        with staged_directory(out, NAMES) as staging:
            write_bytes(staging / "a.bin", b"new")
    assert _tree(tmp_path) == before
    # An empty folder is taken.
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_directory(empty, NAMES) as staging:
        write_bytes(staging / "a.bin", b"new")
    assert _tree(empty) == {"a.bin": b"new"}


def test_a_block_that_writes_a_file_it_did_not_name_leaves_the_previous_folder(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out, NAMES) as staging:
        write_bytes(staging / "a.bin", b"good")
    with pytest.raises(RuntimeError, match=r"out: the new output holds c.bin, not among \['a.bin', 'b.bin'\]"):
        with staged_directory(out, NAMES) as staging:
            write_bytes(staging / "c.bin", b"other")
    assert _tree(out) == {"a.bin": b"good"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staging_folders_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(finished.stdout), os.getpid()
    (tmp_path / f".out.staging-{dead}-abc" / "x").mkdir(parents=True)
    (tmp_path / f".out.staging-{alive}-def").mkdir()
    (tmp_path / f".other.staging-{dead}-abc").mkdir()
    with staged_directory(tmp_path / "out", NAMES) as staging:
        write_bytes(staging / "a.bin", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", f".out.staging-{alive}-def", f".other.staging-{dead}-abc"]
    )


def test_save_torch_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    # torch.save names the archive inside the file after the name it writes to; a random one would leak in.
    for folder in ("a", "b"):
        save_torch(tmp_path / folder / "model.pt", {"weight": torch.arange(3)})
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert zipfile.ZipFile(tmp_path / "a" / "model.pt").namelist()[0] == "model.pt/data.pkl"


def test_an_npy_written_block_by_block_is_a_plain_npy_of_all_the_blocks(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, size=(rows, 4, 3), dtype=np.uint8) for rows in (5, 0, 7, 1)]
    writer = NpyWriter(tmp_path / "a.npy", np.uint8, (4, 3))
    for block in blocks:
        writer.append(block)
    with pytest.raises(ValueError, match=r"a block of float32 \(4, 3\) rows, expected uint8 \(4, 3\)"):
        writer.append(np.zeros((2, 4, 3), dtype=np.float32))
    writer.close()
    expected = np.concatenate(blocks)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), expected)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped.shape == (13, 4, 3) and mapped.offset % 64 == 0  # data aligned as numpy aligns it
    np.testing.assert_array_equal(mapped, expected)
    # The same bytes as np.save would write, after the header.
    with open(tmp_path / "b.npy", "wb") as file:
        np.save(file, expected)
    saved, written = (tmp_path / "b.npy").read_bytes(), (tmp_path / "a.npy").read_bytes()
    assert written[NpyWriter.HEADER_BYTES :] == saved[len(saved) - expected.nbytes :]
