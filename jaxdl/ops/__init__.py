"""Fast XLA:CPU lowerings of hot ops: convolution, pooling, LSTM scan, row sums.

Drop-ins for the lax / flax.linen functions, same signatures:

    nn.Conv(..., conv_general_dilated=ops.conv_general_dilated)
    ops.max_pool(x, (2, 2), strides=(2, 2))
    ops.conv_transpose(x, w, strides, padding)   # = lax.conv_transpose

What measured fastest on this 2-core machine (scripts/benchmark.py; figures
in docs/performance.md): `configure_cpu()` at program start (XLA's Eigen
convolutions instead of its single-threaded YNNPACK ones, and `tune_malloc`),
lax convolutions (`ops.conv_general_dilated` hands them to lax under Eigen;
under YNNPACK it keeps im2col for inputs of <= 8 channels, where it wins:
`ops.conv.IM2COL_MAX_CHANNELS`), and `ops.max_pool`: the CIFAR CNN step 4.9x
over plain layers with jax's defaults. `ops.conv_transpose` (GEMM + col2im by
output phase; `ops.ConvTranspose` is the flax layer) makes a DCGAN generator's
forward+backward 6x faster than `lax.conv_transpose`. `jaxdl.ops.lstm` is the
LSTM scan with a matrix-product backward. `ops.row_sum` / `ops.row_mean`
are per-example sums and means over images as a product with ones (XLA:CPU's
own sum over [B, H, W, 1] is ~25x slower; `jaxdl/ops/reduce.py`).

`tune_malloc()` removes a CPU cost that is not in the ops themselves: XLA:CPU
allocates each executable's temporaries per run with posix_memalign; glibc
serves requests over 32 MiB with a fresh mmap and returns them with munmap,
so every train step page-faults its whole temp arena anew (~46k faults/step
for the CIFAR CNN, ~90 ms of kernel time on this VM). No mmap and no trimming
keep that memory mapped. `configure_cpu()` also turns off jax's asynchronous
CPU dispatch, so that a step runs on (and allocates from) the calling
thread: with async dispatch it runs on a PjRt worker thread, whose malloc
arena's heaps are capped at 64 MiB, so the big temporaries went back to mmap
(unless every thread shared one arena, whose lock then slowed the small
steps: MNIST MLP 0.61 vs 0.48 ms; see docs/performance.md). The data
pipeline's grain threads still prepare batches while a step runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from jaxdl.ops.conv import conv_general_dilated, conv_transpose
from jaxdl.ops.layers import ConvTranspose
from jaxdl.ops.lstm import lstm_scan_fused
from jaxdl.ops.pool import avg_pool, max_pool
from jaxdl.ops.reduce import row_mean, row_sum

__all__ = ["conv_general_dilated", "conv_transpose", "ConvTranspose",
           "lstm_scan_fused", "max_pool", "avg_pool", "row_sum", "row_mean",
           "tune_malloc", "configure_cpu", "CPU_XLA_FLAGS"]

# XLA:CPU (jax 0.10) routes convolutions to YNNPACK fusions by default; those
# run on one thread. This keeps them on XLA's multi-threaded Eigen kernels.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_malloc() -> bool:
  """Keeps freed heap memory mapped (glibc only); True if applied.

  Equivalent environment, set before Python starts: MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=<large>. Cost: freed memory is not returned to the
  OS (peak RSS stays). Threads keep their own malloc arenas (see the module
  docstring for why the steps' big buffers come from the main one).
  """
  name = ctypes.util.find_library("c")
  if not name:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  ok = mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
  return bool(ok)


def configure_cpu(*, eigen_convolutions: bool = True,
                  malloc: bool = True, sync_dispatch: bool = True) -> bool:
  """Applies CPU_XLA_FLAGS (appended to XLA_FLAGS), `tune_malloc()` and
  synchronous CPU dispatch (`jax_cpu_enable_async_dispatch=False`).

  Must run before jax initialises its backends (the first computation or
  `jax.devices()`); returns False, changing nothing, when that has happened.
  Flags already present in XLA_FLAGS are not repeated.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    return False
  if eigen_convolutions:
    from jaxdl.parallel import add_xla_flags  # pylint: disable=g-import-not-at-top
    add_xla_flags(CPU_XLA_FLAGS)
  if malloc:
    tune_malloc()
  if sync_dispatch:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True
