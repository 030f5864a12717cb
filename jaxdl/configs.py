"""The base config every experiment starts from, and its validation."""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value is out of range; the message names it and the fix."""


# The hyperparameters that belong to one optimizer or another. A config leaves
# them None, meaning that optimizer's own default (torch.optim's values, in
# `jaxdl.train.optim.HYPERPARAMS`, the one place they are written).
OPTIMIZER_HYPERPARAMS = ("momentum", "b1", "b2", "eps", "decay", "weight_decay",
                         "initial_accumulator_value")


def optimizer_config(**values) -> ml_collections.ConfigDict:
  """An `optimizer` section: every field (see `jaxdl.train.optim.make_optimizer`),
  the optimizer-specific ones None (typed float, so --config flags set them)."""
  c = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
      decay_steps=0, step_boundaries=(0.5, 0.75), step_factor=0.1, final_fraction=0.0,
      l1=0.0, l2=0.0, grad_clip_norm=0.0))
  for k in OPTIMIZER_HYPERPARAMS:
    c[k] = ml_collections.FieldReference(None, field_type=float)
  for k, v in values.items():
    if k not in c:
      raise ConfigError(f"optimizer.{k}: no such field (an optimizer section has "
                        f"{', '.join(sorted(c))})")
    c[k] = v
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classification"
  c.dataset = "digits"
  c.data_dir = ""  # where the official files are (mnist, cifar10, imdb, tfds) or your folders
  c.tfds_name = ""
  # image_folder: decoded arrays are cached here ('' = $XDG_CACHE_HOME/jaxdl/datasets
  # or ~/.cache/jaxdl/datasets, 'none' = no cache); image_size=H,W resizes every
  # image (() keeps the stored size); color_mode 'grayscale' / 'rgb' converts every
  # image ('' keeps the stored mode, which must then be the same for all).
  c.cache_dir = ""
  c.image_size = ()
  c.color_mode = ""
  # Text datasets (imdb, text_folder): the vocabulary's most frequent num_words,
  # maxlen words per text, 'post' keeps each text's beginning, 'pre' its end
  # (Keras' pad_sequences); imdb_source 'archive', 'folder' or 'tfds'.
  c.num_words = 10000
  c.maxlen = 100
  c.truncating = "post"
  c.imdb_source = "archive"
  c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": ml_collections.ConfigDict()})
  c.loss = "softmax_cross_entropy"
  c.optimizer = optimizer_config()
  c.batch_size = 128          # global, over all devices and processes
  c.eval_batch_size = 0       # 0: batch_size
  c.num_steps = 0             # 0: num_epochs * steps per epoch
  c.num_epochs = 1
  c.eval_every = 0            # steps; 0: once per epoch (and at the end)
  c.checkpoint_every = 0      # steps; 0: at every evaluation
  c.keep_checkpoints = 3
  c.log_every = 100
  c.seed = 0
  c.dtype = "float32"         # compute dtype: float32 or bfloat16 (params stay float32)
  c.grad_accum_steps = 1      # micro-batches per step (batch_size is the whole step's)
  # K: send K steps' batches to the devices at once (the same run for any K);
  # 'auto': 16 on CPU, where it keeps the pipeline up with sub-ms steps, 1 on
  # accelerators (`jaxdl.ops.platform.batches_per_transfer`). An int or 'auto'.
  c.batches_per_transfer = ml_collections.FieldReference("auto", field_type=object)
  c.augment = ml_collections.ConfigDict(dict(crop_padding=0, flip=False))
  c.normalize = ml_collections.ConfigDict(dict(mean=(), std=()))
  c.async_checkpoints = True
  c.tensorboard = True
  c.plots = True              # curves.png and confusion_matrix.png, drawn after training
  c.nonfinite = "stop"        # NaN/Inf loss or grads: 'stop' the run, or 'skip' the update
  # SIGTERM/SIGINT: the step is saved before exiting; if that save is not
  # committed this many seconds after the signal, exit keeping the previous
  # checkpoint (0: wait for it however long it takes).
  c.preemption_grace_s = 0.0
  # A workdir whose checkpoints all fail to verify is refused; True trains it
  # again from step 0 (the damaged checkpoints and metrics.jsonl moved aside).
  c.start_over = False
  return c


def set_field(config, key: str, value) -> None:
  """config['a.b.c'] = value for a dotted `key` (as --config.a.b.c=value)."""
  *path, leaf = key.split(".")
  for part in path:
    config = config[part]
  config[leaf] = value


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (a run's config.json) over `base_config()`: a field that an
  older jaxdl did not write takes today's default."""
  def merge(base, new):
    for k, v in new.items():
      base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(
          base.get(k), dict) else v
    return base
  return ml_collections.ConfigDict(merge(base_config().to_dict(), saved))


def _positive(config, field, allow_zero=False):
  v = config.get(field)
  ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
  if not ok:
    kind = "a non-negative" if allow_zero else "a positive"
    raise ConfigError(f"{field}={v!r} must be {kind} integer; pass e.g. --config.{field}="
                      f"{0 if allow_zero else 1}")


def validate(config, num_devices: int = 1) -> None:
  """Raises ConfigError with one line for the first bad value."""
  _positive(config, "batch_size")
  for f in ("eval_batch_size", "num_steps", "num_epochs", "eval_every",
            "checkpoint_every", "seed"):
    _positive(config, f, allow_zero=True)
  _positive(config, "log_every")
  _positive(config, "keep_checkpoints")
  if config.num_steps == 0 and config.num_epochs == 0:
    raise ConfigError("num_steps=0 and num_epochs=0: nothing to train; pass "
                      "--config.num_steps=N or --config.num_epochs=N")
  for f in ("batch_size", "eval_batch_size"):
    v = config.get(f)
    if v and v % num_devices:
      raise ConfigError(f"{f}={v} is not divisible by the {num_devices} devices; pass "
                        f"--config.{f}={max(num_devices, v // num_devices * num_devices)}")
  _positive(config, "grad_accum_steps")
  if "batches_per_transfer" in config and config.batches_per_transfer != "auto":
    _positive(config, "batches_per_transfer")
  k = config.grad_accum_steps
  if config.batch_size % (k * num_devices):
    raise ConfigError(f"batch_size={config.batch_size} must split into grad_accum_steps={k} "
                      f"micro-batches over {num_devices} devices; pass --config.batch_size="
                      f"{max(1, config.batch_size // (k * num_devices)) * k * num_devices}")
  lr = config.optimizer.get("learning_rate")
  if not isinstance(lr, (int, float)) or lr < 0:
    raise ConfigError(f"optimizer.learning_rate={lr!r} must be a non-negative number; "
                      "pass e.g. --config.optimizer.learning_rate=0.001")
  if not isinstance(config.preemption_grace_s, (int, float)) or config.preemption_grace_s < 0:
    raise ConfigError(f"preemption_grace_s={config.preemption_grace_s!r} must be >= 0 "
                      "seconds (0: no limit); pass e.g. --config.preemption_grace_s=25")
  if config.nonfinite not in ("stop", "skip"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: choose 'stop' (end the run at "
                      "a NaN/Inf loss) or 'skip' (drop that update); pass "
                      "--config.nonfinite=stop")
  size = config.image_size or ()
  if size and not (len(size) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
    raise ConfigError(f"image_size={tuple(size)!r} must be H,W (two positive integers) or "
                      "() to keep the stored size; pass e.g. --config.image_size=32,32")
  if config.color_mode not in ("", "grayscale", "rgb"):
    raise ConfigError(f"color_mode={config.color_mode!r}: choose '' (as stored), "
                      "'grayscale' or 'rgb' (--config.color_mode=...)")
  if config.truncating not in ("pre", "post"):
    raise ConfigError(f"truncating={config.truncating!r}: choose 'post' (keep each "
                      "text's beginning) or 'pre' (its end) (--config.truncating=...)")
  if config.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"dtype={config.dtype!r}: choose float32 or bfloat16 "
                      "(--config.dtype=...)")
