"""The MATLAB 5 container of a .mat file, with its compressed variables inflated within a size limit.

A MATLAB 5 file is a 128-byte header and a sequence of elements: an 8-byte tag (data type, byte count)
followed by that many bytes. Each variable is one miMATRIX element whose parts (flags, dimensions,
name, data; cells and structs hold miMATRIX parts again) are elements too. MATLAB's default and
`savemat(do_compression=True)` wrap each variable in an miCOMPRESSED element, a zlib stream.

scipy.io.loadmat trusts every byte count: it inflates a compressed variable as far as the stream
goes (a few MB of zlib hold GBs of zeros) and allocates what a part's tag declares before reading
it. `inflate` rewrites a file into the equivalent uncompressed one, stopping once that would grow
past a limit, and checks that the elements tile the file and each variable exactly, so that every
tag loadmat can meet declares no more than the bytes that follow it: what loadmat allocates for a
numeric array is then bounded by the bytes it is given. It also checks every data type: scipy
1.17's loadmat looks a numeric array's data type up in a table without a bounds or None check and
crashes the interpreter (a segmentation fault, found by tests/test_fuzz.py) for any type outside it.
"""

import struct
import zlib

from segnet.errors import DatasetError

HEADER_BYTES = 128
MI_MATRIX = 14
MI_COMPRESSED = 15
# The data types of the MATLAB 5 format (miINT8 ... miUINT64, miUTF8 ... miUTF32): those scipy has a dtype for.
_DATA_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18}
# MATLAB classes whose variables hold data parts only, never variables (char, sparse, the numeric classes).
_LEAF_CLASSES = range(4, 16)
_TAG_BYTES = 8
# MATLAB 7.3 files are HDF5 containers; MATLAB puts the HDF5 signature 512 bytes in.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def inflate(data: bytes, source: str, *, max_bytes: int) -> bytes:
    """Returns the uncompressed equivalent of a MATLAB 5 file, after checking every element's byte count.

    Args:
        data: The content of a .mat file.
        source: Names the file in error messages.
        max_bytes: The most bytes the uncompressed file may have.

    Raises:
        DatasetError: Not a MATLAB 5 file, an element that runs past what holds it, a corrupt
            compressed variable, or more than max_bytes once inflated.
    """
    order = _byte_order(data, source)
    view = memoryview(data)  # slices of a memoryview share the bytes instead of copying them
    parts: list[bytes | memoryview] = [view[:HEADER_BYTES]]
    size, inflated_any = HEADER_BYTES, False
    elements = _elements(view, HEADER_BYTES, len(view), order, source, padded=False, context="")
    for number, (data_type, start, end) in enumerate(elements, start=1):
        element: bytes | memoryview
        if data_type == MI_COMPRESSED:
            element = _inflate_variable(view[start:end], order, source, budget=max_bytes - size, max_bytes=max_bytes)
            inflated_any = True
        elif data_type == MI_MATRIX:
            element = view[start - _TAG_BYTES : end]
        else:
            raise _corrupt(source, start - _TAG_BYTES, f"an element of type {data_type} where a variable belongs")
        size += len(element)
        if size > max_bytes:
            raise _too_big(source, max_bytes)
        _check_parts(element, order, source, context=f" of variable {number}")
        parts.append(element)
    return b"".join(parts) if inflated_any else bytes(data)


def _byte_order(data: bytes, source: str) -> str:
    """Checks the header as scipy reads it and returns the file's byte order for struct."""
    if data[128:136] == _HDF5_SIGNATURE or data[512:520] == _HDF5_SIGNATURE or _major_version(data) == 2:
        raise DatasetError(
            f"{source}: MATLAB 7.3 (HDF5) .mat files are not supported; re-save it in MATLAB with "
            "save(..., '-v7') or write it with scipy.io.savemat"
        )
    # scipy takes a file whose first four bytes hold a zero for MATLAB 4, a format without this header.
    if _is_matlab_4(data):
        raise DatasetError(
            f"{source}: not a readable MATLAB 5 .mat file (it is a MATLAB 4 file; re-save it in MATLAB with "
            "save(..., '-v7') or write it with scipy.io.savemat)"
        )
    if len(data) < HEADER_BYTES or 0 in data[:4] or data[126:128] not in (b"IM", b"MI"):
        raise DatasetError(f"{source}: not a readable MATLAB 5 .mat file (no MATLAB 5 header)")
    if _major_version(data) != 1:
        raise DatasetError(f"{source}: not a readable MATLAB 5 .mat file (header version {_major_version(data)})")
    return "<" if data[126:128] == b"IM" else ">"


def _is_matlab_4(data: bytes) -> bool:
    """Whether the file starts like a MATLAB 4 matrix: five int32 (type code MOPT with M 0-4, O 0, P 0-5 and
    T 0-2; rows; columns; imaginary flag 0 or 1; name length), then the name, which ends with a NUL byte."""
    if len(data) < 20 or 0 not in data[:4]:
        return False
    for order in "<>":
        code, rows, columns, imaginary, name_length = struct.unpack(order + "5i", data[:20])
        machine, zero, precision, kind = code // 1000, code // 100 % 10, code // 10 % 10, code % 10
        if (
            0 <= code < 5000
            and machine <= 4
            and zero == 0
            and precision <= 5
            and kind <= 2
            and rows >= 0
            and columns >= 0
            and imaginary in (0, 1)
            and 1 <= name_length <= len(data) - 20
            and data[20 + name_length - 1] == 0
        ):
            return True
    return False


def _major_version(data: bytes) -> int | None:
    if len(data) < HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        return None
    # The version is the 16-bit number 0x0100 in the file's byte order: its major part is the byte 0x01.
    return data[125] if data[126:128] == b"IM" else data[124]


def _inflate_variable(compressed: bytes | memoryview, order: str, source: str, budget: int, max_bytes: int) -> bytes:
    """Inflates one miCOMPRESSED element into the miMATRIX element it holds, refusing more than budget bytes."""
    inflater = zlib.decompressobj()
    try:
        # max_length=0 would mean "no limit"; one byte more than the budget shows that it is exceeded.
        inflated = inflater.decompress(compressed, max(budget, 0) + 1)
    except zlib.error as error:
        raise DatasetError(f"{source}: a compressed variable is corrupt ({error})") from error
    if len(inflated) > budget:
        raise _too_big(source, max_bytes)
    if len(inflated) < _TAG_BYTES:
        raise DatasetError(f"{source}: a compressed variable is truncated")
    data_type, byte_count = struct.unpack_from(order + "II", inflated)
    if data_type != MI_MATRIX or _TAG_BYTES + byte_count > len(inflated):
        raise DatasetError(f"{source}: a compressed variable does not hold one whole variable (truncated or corrupt)")
    # Bytes after the variable are not part of it; scipy skips them too.
    return inflated[: _TAG_BYTES + byte_count]


def _check_parts(element: bytes | memoryview, order: str, source: str, context: str) -> None:
    """Checks that the parts of a variable, and of the variables nested in it, tile it exactly and have known types."""
    pending = [(_TAG_BYTES, len(element))]  # a stack, not recursion: nesting depth is the file's choice
    while pending:
        start, end = pending.pop()
        parts = list(_elements(element, start, end, order, source, padded=True, context=context))
        # loadmat reads a part of a numeric array as numbers whatever its type; a nested variable there crashes it.
        matlab_class = _matlab_class(element, parts, order)
        holds_variables = matlab_class is None or matlab_class not in _LEAF_CLASSES
        for data_type, part_start, part_end in parts:
            if data_type == MI_MATRIX and holds_variables:
                pending.append((part_start, part_end))
            elif data_type not in _DATA_TYPES:
                what = f"a part of data type {data_type}, which the format does not have"
                raise _corrupt(source, f"{part_start}{context}", what)


def _matlab_class(element: bytes | memoryview, parts: list[tuple[int, int, int]], order: str) -> int | None:
    """The class number in a variable's first part, its array flags (8 bytes of miUINT32); None without one."""
    if not parts or parts[0][0] != 6 or parts[0][2] - parts[0][1] != 8:
        return None
    return struct.unpack_from(order + "I", element, parts[0][1])[0] & 0xFF


def _elements(data: bytes | memoryview, start: int, end: int, order: str, source: str, padded: bool, context: str):
    """Yields (data type, data start, data end) of the elements that must tile data[start:end] exactly.

    `context` says in error messages what byte positions count from (" of variable 2"; "": the file).

    Parts of a variable are padded to 8 bytes and may use the small format (type and byte count in one
    4-byte word, up to 4 data bytes in the next); top-level elements are neither.
    """
    position = start
    while position < end:
        if end - position < _TAG_BYTES:
            raise _corrupt(source, f"{position}{context}", "an element tag is cut off")
        first, second = struct.unpack_from(order + "II", data, position)
        if padded and first >> 16:
            byte_count = first >> 16
            if byte_count > 4:
                raise _corrupt(source, f"{position}{context}", "a small element declares more than 4 bytes")
            yield first & 0xFFFF, position + 4, position + 4 + byte_count
            position += _TAG_BYTES
            continue
        data_end = position + _TAG_BYTES + second
        if data_end > end:
            what = f"an element declares {second:,} bytes, only {end - position - _TAG_BYTES:,} follow"
            raise _corrupt(source, f"{position}{context}", what)
        yield first, position + _TAG_BYTES, data_end
        position = data_end + (-second % 8 if padded else 0)
    if position != end:
        raise _corrupt(source, f"{end}{context}", "padding runs past the end of a variable")


def _corrupt(source: str, position: int | str, what: str) -> DatasetError:
    return DatasetError(
        f"{source}: not a readable MATLAB 5 .mat file (at byte {position}: {what}; truncated or corrupt)"
    )


def _too_big(source: str, max_bytes: int) -> DatasetError:
    return DatasetError(
        f"{source}: inflates to more than data.max_member_bytes={max_bytes:,} bytes (its variables are compressed "
        "inside the .mat file); refusing to read it (a .mat bomb?)"
    )
