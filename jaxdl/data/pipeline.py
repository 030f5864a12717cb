"""grain input pipelines.

The training stream is a grain `MapDataset` over *global batch indices*: batch b
holds positions [j*G, (j+1)*G) of epoch e's permutation (e, j = divmod(b,
steps_per_epoch)), the permutation a function of (seed, epoch) alone. Each
process reads only its slice of every global batch, so the global batch is the
same whatever the number of processes or devices, and the iterator's state
(grain's checkpointable `next_index`) is the number of batches consumed.
Whole batches are gathered with one numpy fancy-index when the source exposes
`arrays` (per-example reads otherwise), normalised and augmented vectorised,
and prefetched by grain's reader threads.

With `batches_per_transfer=K > 1` grain's element is a *block*: the K
consecutive batches [jK, jK + K) stacked on a new leading axis, each exactly
the batch `TrainBatches` makes for its index. The training loop sends a block
to the devices in one transfer and the compiled step picks its batch
(`state.step % K`), so the host pays grain's and the transfer's per-element
cost once per K steps. Blocks are aligned to multiples of K, so the data of
every step, and therefore the run, is the same for any K; the iterator's state
still counts batches (`{'next_index': batches consumed}`), as with K = 1.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from jaxdl.configs import ConfigError

Batch = dict[str, np.ndarray]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def _gather(source: Any, idx: np.ndarray) -> Batch:
  arrays = getattr(source, "arrays", None)
  if arrays is not None:
    inputs, labels = arrays
    return {"inputs": inputs[idx], "label": labels[idx]}
  items = [source[int(i)] for i in idx]
  return {k: np.stack([it[k] for it in items]) for k in items[0]}


def normalize(batch: Batch, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> Batch:
  """uint8 images -> float32 in [0, 1] (then (x - mean) / std if given)."""
  x = batch["inputs"]
  if x.dtype == np.uint8:
    x = x.astype(np.float32) * np.float32(1 / 255)
    if mean is not None:
      x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return {**batch, "inputs": x}


def augment_images(x: np.ndarray, rng: np.random.Generator, *, crop_padding: int = 0,
                   flip: bool = False) -> np.ndarray:
  """Random crop after zero padding, and random horizontal flip, per example."""
  n, h, w = x.shape[:3]
  if crop_padding:
    p = crop_padding
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    dy = rng.integers(0, 2 * p + 1, n)
    dx = rng.integers(0, 2 * p + 1, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    x = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    mask = rng.random(n) < 0.5
    x = np.where(mask[:, None, None, None], x[:, :, ::-1], x)
  return x


class TrainBatches:
  """Callable: global batch index -> this process's slice of that batch."""

  def __init__(self, source, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               crop_padding: int = 0, flip: bool = False,
               mean=None, std=None):
    n = len(source)
    if global_batch_size % process_count:
      raise ConfigError(f"batch_size={global_batch_size} does not split over "
                       f"{process_count} processes")
    self.steps_per_epoch = n // global_batch_size
    if self.steps_per_epoch == 0:
      raise ConfigError(f"batch_size={global_batch_size} is larger than the "
                       f"{n} training examples; pass a smaller --config.batch_size")
    self.source, self.n, self.seed = source, n, seed
    self.global_batch_size = global_batch_size
    self.local = global_batch_size // process_count
    self.offset = process_index * self.local
    self.crop_padding, self.flip = crop_padding, flip
    self.mean, self.std = mean, std

  def indices(self, b: int) -> np.ndarray:
    """This process's example indices of global batch b."""
    epoch, j = divmod(int(b), self.steps_per_epoch)
    perm = _permutation(self.seed, epoch, self.n)
    start = j * self.global_batch_size + self.offset
    return perm[start:start + self.local]

  def __call__(self, b: int) -> Batch:
    epoch, j = divmod(int(b), self.steps_per_epoch)
    batch = _gather(self.source, self.indices(b))
    if self.crop_padding or self.flip:
      # Draw for the whole global batch, keep our slice: the same augmentation
      # whatever the process count.
      rng = np.random.default_rng([self.seed, epoch, j, 1])
      x = np.zeros((self.global_batch_size,) + batch["inputs"].shape[1:],
                   batch["inputs"].dtype)
      x[self.offset:self.offset + self.local] = batch["inputs"]
      x = augment_images(x, rng, crop_padding=self.crop_padding, flip=self.flip)
      batch["inputs"] = x[self.offset:self.offset + self.local]
    return normalize(batch, self.mean, self.std)


def train_iterator(source, *, global_batch_size: int, seed: int, num_batches: int,
                   process_index: int = 0, process_count: int = 1,
                   crop_padding: int = 0, flip: bool = False, mean=None, std=None,
                   num_threads: int = 2, prefetch: int = 4,
                   batches_per_transfer: int = 1) -> grain.DatasetIterator:
  """A checkpointable iterator over `num_batches` training batches.

  `batches_per_transfer > 1` returns a `BlockIterator` (same batches, same
  state, read K at a time)."""
  fn = TrainBatches(source, global_batch_size=global_batch_size, seed=seed,
                    process_index=process_index, process_count=process_count,
                    crop_padding=crop_padding, flip=flip, mean=mean, std=std)
  if batches_per_transfer < 1:
    raise ConfigError(f"batches_per_transfer={batches_per_transfer}: use 1 or more "
                      "(--config.batches_per_transfer)")
  if batches_per_transfer > 1:
    return BlockIterator(fn, batches_per_transfer, num_batches, num_threads, prefetch)
  ds = grain.MapDataset.range(num_batches).map(fn)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  return iter(ds)


def device_unit_scale(x):
  """`normalize` without mean/std, for a traced uint8 array: float32 in [0, 1]."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return x.astype(jnp.float32) * np.float32(1 / 255) if x.dtype == jnp.uint8 else x


def _stack(batches: list[Batch]) -> Batch:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class BlockIterator(grain.DatasetIterator):
  """Batches read K at a time (see the module docstring); state in batches.

  `next(it)` returns one batch, as the plain iterator does; the training loop
  calls `next_device_block(to_device)` once per step instead: the current
  block, sent with `to_device` when the step enters it, and the step taken.
  """

  def __init__(self, batches: TrainBatches, k: int, num_batches: int,
               num_threads: int, prefetch: int):
    super().__init__()
    self.k = k
    self.batches = batches
    ds = grain.MapDataset.range(-(-num_batches // k)).map(self.block)
    self._blocks = iter(ds.to_iter_dataset(grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch)))
    self._pos = 0          # batches consumed
    self._next_block = 0   # the block grain's iterator yields next
    self._block = None     # (block index, host block) last read
    self._device = None    # (block index, that block on the devices)

  def block(self, j: int) -> Batch:
    """Batches [jK, jK + K) stacked: [K, batch, ...].

    Without augmentation, one gather for the K batches, and uint8 images stay
    uint8 when there is no mean/std: the compiled step scales them to [0, 1]
    (`device_unit_scale`, the same float32 product as `normalize`), a quarter
    of the bytes to move and no host pass over them. Otherwise each batch is
    exactly `TrainBatches`'s.
    """
    fb, k = self.batches, self.k
    if fb.crop_padding or fb.flip:
      return _stack([fb(j * k + i) for i in range(k)])
    idx = np.concatenate([fb.indices(j * k + i) for i in range(k)])
    batch = _gather(fb.source, idx)
    if batch["inputs"].dtype != np.uint8 or fb.mean is not None:
      batch = normalize(batch, fb.mean, fb.std)
    return {key: v.reshape((k, -1) + v.shape[1:]) for key, v in batch.items()}

  def next_block(self) -> tuple[int, int, Batch]:
    j = self._pos // self.k
    if self._block is None or self._block[0] != j:
      if self._next_block != j:  # after set_state: move grain's iterator
        self._blocks.set_state({"next_index": j})
      self._block = (j, next(self._blocks))
      self._next_block = j + 1
    return j, self._pos % self.k, self._block[1]

  def advance(self, n: int = 1) -> None:
    self._pos += n

  def next_device_block(self, to_device) -> Any:
    """The block of the next step as `to_device(host block)` (sent once per
    block), and that step taken: the compiled step picks batch `step % K`."""
    j, _, host = self.next_block()
    if self._device is None or self._device[0] != j:
      self._device = (j, to_device(host))
    self.advance()
    return self._device[1]

  def __next__(self) -> Batch:
    _, offset, block = self.next_block()
    self.advance()
    fb = self.batches
    return normalize({key: v[offset] for key, v in block.items()}, fb.mean, fb.std)

  def get_state(self) -> dict[str, int]:
    return {"next_index": self._pos}

  def set_state(self, state: dict[str, int]) -> None:
    self._pos = int(state["next_index"])
    self._block = self._device = None


def eval_batches(source, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, mean=None, std=None) -> Iterator[Batch]:
  """The whole split in order; the last batch padded, with a 0/1 'mask'."""
  n = len(source)
  local = global_batch_size // process_count
  for start in range(0, n, global_batch_size):
    idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
    mask = (idx < n).astype(np.float32)
    batch = _gather(source, np.minimum(idx, n - 1))
    batch = normalize(batch, mean, std)
    batch["mask"] = mask
    yield batch


def steps_per_epoch(source, global_batch_size: int) -> int:
  return len(source) // global_batch_size
