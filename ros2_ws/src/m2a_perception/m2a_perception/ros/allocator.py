"""glibc malloc settings for a process that allocates multi-megabyte buffers every frame.

Every frame the node allocates and frees buffers of several megabytes: rclpy's C copy of each
input and output message, the serialized CDR buffer, torch tensors of post-processing. glibc
serves such sizes from fresh `mmap`s (or trims its heap after freeing them), so every frame
page-faults all that memory in again. On the project's 2-core VMs a fault costs microseconds:
`serialize_message` of an 8 MB image took 16-23 ms instead of 1.8 ms. Raising the mmap
threshold to its maximum and the trim threshold keeps these buffers in the heap, where they are
reused without faults; the price is that up to `TRIM_THRESHOLD` of freed memory stays mapped.

The node does that work in its inference thread, and glibc gives threads arenas of their own,
made of 64 MB heaps that are unmapped as soon as they empty, whatever the thresholds say. So
the process also keeps one arena for all threads (M_ARENA_MAX 1). In the node (m2a-node-bench,
1024x2048 frames and outputs, tiny model) post-processing went from 73-84 ms to 54-57 ms;
publishing did not change measurably. A node has a handful of threads that allocate, so the
shared arena's lock costs nothing measurable.

Users who set glibc's own variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_ARENA_MAX`, or `glibc.malloc.*` in `GLIBC_TUNABLES`) keep their settings, and
`M2A_MALLOC_TUNING=0` disables the tuning. Other C libraries are left alone.

Allowed dependencies: standard library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# glibc's largest accepted mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
ARENA_MAX = 1
USER_VARIABLES = (
    'MALLOC_MMAP_THRESHOLD_',
    'MALLOC_TRIM_THRESHOLD_',
    'MALLOC_ARENA_MAX',
    'GLIBC_TUNABLES',
)
DISABLE_VARIABLE = 'M2A_MALLOC_TUNING'


def tune_allocator(environ: dict[str, str] | None = None) -> str:
    """Apply the settings above to this process.

    Call it while the process has a single thread, before importing torch, OpenCV or rclpy:
    their imports start threads with arenas of their own, and glibc hands new threads one of
    the existing arenas even with M_ARENA_MAX 1.

    Returns:
        What was done, for the log: 'tuned', or why nothing was changed.
    """
    env = os.environ if environ is None else environ
    if env.get(DISABLE_VARIABLE, '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return f'left alone ({DISABLE_VARIABLE}={env[DISABLE_VARIABLE]})'
    user = [name for name in USER_VARIABLES[:3] if name in env]
    if 'glibc.malloc.' in env.get('GLIBC_TUNABLES', ''):
        user.append('GLIBC_TUNABLES')
    if user:
        return f'left alone ({", ".join(user)} set)'
    mallopt = _mallopt()
    if mallopt is None:
        return 'left alone (not glibc)'
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_ARENA_MAX, ARENA_MAX),
    )
    accepted = [mallopt(parameter, value) for parameter, value in settings]
    if not all(accepted):
        return 'partly tuned (mallopt refused a setting)'
    return 'tuned'


def _mallopt():  # type: ignore[no-untyped-def]
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name or 'libc.so.6')
        mallopt = libc.mallopt
        # gnu_get_libc_version exists only in glibc; musl also has no mallopt semantics.
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
