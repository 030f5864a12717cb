"""Fast XLA:CPU lowerings of hot ops: convolution, pooling, LSTM scan, row sums.

Drop-ins for the lax / flax.linen functions, same signatures:

    nn.Conv(..., conv_general_dilated=ops.conv_general_dilated)
    ops.max_pool(x, (2, 2), strides=(2, 2))
    ops.conv_transpose(x, w, strides, padding)   # = lax.conv_transpose

What measured fastest on this 2-core machine (scripts/benchmark.py; figures
in docs/performance.md): `jaxdl.runtime.configure_cpu()` at program start (XLA's Eigen
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

Which of these run on which platform: `jaxdl.ops.platform` (every model's
`conv_impl` / `scan_impl` defaults to 'auto': the fast paths on CPU only).
The process-level CPU setup they were measured with (`configure_cpu()`:
XLA flags, malloc, dispatch) is `jaxdl.runtime`'s.
"""

from __future__ import annotations

from jaxdl.ops import platform
from jaxdl.ops.conv import conv_general_dilated, conv_transpose
from jaxdl.ops.layers import ConvTranspose
from jaxdl.ops.lstm import lstm_scan_fused
from jaxdl.ops.pool import avg_pool, max_pool
from jaxdl.ops.reduce import row_mean, row_sum

__all__ = ["conv_general_dilated", "conv_transpose", "ConvTranspose",
           "lstm_scan_fused", "max_pool", "avg_pool", "row_sum", "row_mean",
           "platform"]
