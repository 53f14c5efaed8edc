"""Training speed on the CPU, applied to a built model from outside: C++ kernels for the memory-bound layers,
Winograd convolutions, and the allocator setting. Only training imports this package."""

from segnet.speed.allocator import keep_freed_memory
from segnet.speed.layers import use_cpu_kernels, use_winograd

__all__ = ["keep_freed_memory", "use_cpu_kernels", "use_winograd"]
