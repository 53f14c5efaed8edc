"""Keeping freed memory in the process, so training does not page-fault on every large tensor.

glibc returns large freed blocks to the kernel (blocks above its mmap threshold, and the top of the
heap above its trim threshold). A training step allocates and frees the same large activations every
step, so each step then takes them back as fresh pages, every 4 KiB of which costs a page fault and
the kernel zeroing it: about 5,500 faults per step of our default model on the CPU. Raising both
thresholds keeps the memory for reuse; the process's resident memory then stays at its peak instead
of falling between steps.
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems; larger blocks (validation batches) still use mmap.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: in effect, never trim


def keep_freed_memory() -> bool:
    """Makes glibc keep freed blocks of up to 32 MiB for reuse; returns False where that is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no glibc mallopt here (%s): the allocator keeps its defaults", name)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
