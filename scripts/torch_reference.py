"""PyTorch CPU versions of jaxdl's registered models, for `benchmark.py --compare`.

Each builder returns one train step (forward, backward, optimizer update) of
the same architecture, loss, optimizer family and batch as the jaxdl row it is
compared with, on synthetic data made once. Two variants per model:

  eager:    plain PyTorch modules;
  compiled: the forward + loss under `torch.compile` (inductor, C++ kernels on
            CPU), backward by AOTAutograd, the optimizer step eager.

Only `scripts/benchmark.py` imports this module: torch is the optional `bench`
extra (`pip install -e .[bench]`, pinned torch==2.13.0 CPU), never a runtime
dependency of jaxdl.

Shape conventions follow the jaxdl models (see jaxdl/models/*.py): the same
layer widths, kernel sizes, strides and paddings (flax 'SAME' is written as
the equivalent explicit torch padding), so the FLOP counts match. Where the
jaxdl model masks padding tokens the synthetic batches have none, so the
plain torch layers compute the same thing.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(max(1, torch.get_num_threads()))
# Every model's step reuses the same few functions (`loss_fn`, ...) with new
# shapes and modules; dynamo's default limit of 8 recompiles per code object
# would silently fall back to eager after the eighth model.
torch._dynamo.config.recompile_limit = 256  # pylint: disable=protected-access
if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):  # pylint: disable=protected-access
  torch._dynamo.config.accumulated_recompile_limit = 4096  # pylint: disable=protected-access

StepFn = Callable[[], torch.Tensor]


# --- architectures ---------------------------------------------------------


class MLP(nn.Module):

  def __init__(self):
    super().__init__()
    self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(),
                             nn.Dropout(0.2), nn.Linear(128, 10))

  def forward(self, x):
    return self.net(x)


class CNN(nn.Module):
  """Conv32-Pool-Conv64-Pool-Conv64 (3x3 VALID) - Dense64 - Dense10, NHWC input."""

  def __init__(self):
    super().__init__()
    self.c1, self.c2, self.c3 = (nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3),
                                 nn.Conv2d(64, 64, 3))
    self.d1, self.d2 = nn.Linear(4 * 4 * 64, 64), nn.Linear(64, 10)

  def forward(self, x):
    x = x.permute(0, 3, 1, 2)
    x = F.max_pool2d(F.relu(self.c1(x)), 2)
    x = F.max_pool2d(F.relu(self.c2(x)), 2)
    x = F.relu(self.c3(x)).flatten(1)
    return self.d2(F.relu(self.d1(x)))


class Block(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout, momentum=0.1)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, momentum=0.1)
    self.short = None
    if stride != 1 or cin != cout:
      self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                 nn.BatchNorm2d(cout, momentum=0.1))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.short is None else self.short(x)) + y)


class ResNet(nn.Module):
  """CIFAR ResNet-20 (3 stages x 3 blocks, width 16), as jaxdl's `resnet`."""

  def __init__(self, n=3, width=16):
    super().__init__()
    self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(width)
    blocks, cin = [], width
    for stage in range(3):
      for b in range(n):
        cout = width * 2**stage
        blocks.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, 10)

  def forward(self, x):
    x = F.relu(self.bn(self.stem(x.permute(0, 3, 1, 2))))
    return self.head(self.blocks(x).mean((2, 3)))


class LSTMClassifier(nn.Module):
  """Embedding 10000x128, spatial dropout 0.4, LSTM 100, Dense 1."""

  def __init__(self, vocab=10000, embed=128, hidden=100):
    super().__init__()
    self.embed = nn.Embedding(vocab, embed)
    self.drop = nn.Dropout1d(0.4)
    self.lstm = nn.LSTM(embed, hidden, batch_first=True)
    self.head = nn.Linear(hidden, 1)

  def forward(self, tokens):
    x = self.drop(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
    _, (h, _) = self.lstm(x)
    return self.head(h[-1])


class Encoder(nn.Module):
  """Pre-LN encoder (d128, 4 heads, mlp 512, GELU, dropout 0.1) + final LN."""

  def __init__(self, vocab=10000, d=128, heads=4, layers=2, mlp=512,
               max_len=512, causal=False):
    super().__init__()
    self.embed = nn.Embedding(vocab, d)
    self.pos = nn.Embedding(max_len, d)
    for e in (self.embed, self.pos):  # as jaxdl: N(0, 0.02)
      nn.init.normal_(e.weight, std=0.02)
    self.drop = nn.Dropout(0.1)
    layer = nn.TransformerEncoderLayer(d, heads, mlp, 0.1, activation="gelu",
                                       batch_first=True, norm_first=True)
    self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    self.ln = nn.LayerNorm(d)
    self.causal = causal

  def forward(self, tokens):
    t = tokens.shape[1]
    x = self.drop(self.embed(tokens) + self.pos(torch.arange(t))[None])
    mask = (nn.Transformer.generate_square_subsequent_mask(t)
            if self.causal else None)
    return self.ln(self.blocks(x, mask=mask, is_causal=self.causal))


class TransformerClassifier(nn.Module):

  def __init__(self):
    super().__init__()
    self.enc = Encoder()
    self.head = nn.Linear(128, 1)

  def forward(self, tokens):
    return self.head(self.enc(tokens).mean(1))


class TransformerLM(nn.Module):
  """Causal encoder, output tied to the token embedding."""

  def __init__(self):
    super().__init__()
    self.enc = Encoder(causal=True)

  def forward(self, tokens):
    return self.enc(tokens) @ self.enc.embed.weight.T


class Generator(nn.Module):
  """Dense 7*7*128, BN, ReLU, ConvT 64 5x5/2, BN, ReLU, ConvT 1 5x5/2, tanh."""

  def __init__(self, latent=100):
    super().__init__()
    self.fc = nn.Linear(latent, 7 * 7 * 128)
    self.bn0 = nn.BatchNorm2d(128)
    # flax 'SAME' for a stride-2 transpose doubles the size: padding 2, output_padding 1.
    self.t1 = nn.ConvTranspose2d(128, 64, 5, 2, padding=2, output_padding=1)
    self.bn1 = nn.BatchNorm2d(64)
    self.t2 = nn.ConvTranspose2d(64, 1, 5, 2, padding=2, output_padding=1)

  def forward(self, z):
    x = self.fc(z).view(-1, 128, 7, 7)
    x = F.relu(self.bn0(x))
    x = F.relu(self.bn1(self.t1(x)))
    return torch.tanh(self.t2(x))


class Discriminator(nn.Module):
  """Conv 64 4x4/2 SAME, LeakyReLU 0.2, Conv 128 4x4/2 SAME, LeakyReLU, Dense 1."""

  def __init__(self):
    super().__init__()
    self.c1 = nn.Conv2d(1, 64, 4, 2, 1)
    self.c2 = nn.Conv2d(64, 128, 4, 2, 1)
    self.fc = nn.Linear(7 * 7 * 128, 1)

  def forward(self, x):
    x = F.leaky_relu(self.c1(x), 0.2)
    x = F.leaky_relu(self.c2(x), 0.2)
    return self.fc(x.flatten(1))[:, 0]


class DBN(nn.Module):

  def __init__(self):
    super().__init__()
    self.l1, self.l2, self.head = (nn.Linear(784, 500), nn.Linear(500, 500),
                                   nn.Linear(500, 10))

  def forward(self, x):
    x = torch.sigmoid(self.l1(x.flatten(1)))
    return self.head(torch.sigmoid(self.l2(x)))


class DenseAE(nn.Module):

  def __init__(self):
    super().__init__()
    self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                             nn.Linear(256, 32), nn.Linear(32, 256), nn.ReLU(),
                             nn.Linear(256, 784))

  def forward(self, x):
    return self.net(x).view(x.shape)


class ConvAE(nn.Module):
  """Conv 32 3x3/2, Conv 64 3x3/2 (SAME), Dense 32, Dense 7*7*64, ConvT 32, ConvT 1."""

  def __init__(self):
    super().__init__()
    # flax SAME, k3 s2 on 28: pad (0, 1); torch pads symmetrically, so pad by hand.
    self.c1, self.c2 = nn.Conv2d(1, 32, 3, 2), nn.Conv2d(32, 64, 3, 2)
    self.code = nn.Linear(7 * 7 * 64, 32)
    self.fc = nn.Linear(32, 7 * 7 * 64)
    self.t1 = nn.ConvTranspose2d(64, 32, 3, 2, padding=1, output_padding=1)
    self.t2 = nn.ConvTranspose2d(32, 1, 3, 2, padding=1, output_padding=1)

  def forward(self, x):
    b = x.shape[0]
    h = F.relu(self.c1(F.pad(x.permute(0, 3, 1, 2), (0, 1, 0, 1))))
    h = F.relu(self.c2(F.pad(h, (0, 1, 0, 1))))
    z = self.code(h.flatten(1))
    h = F.relu(self.fc(z)).view(b, 64, 7, 7)
    h = F.relu(self.t1(h))
    return self.t2(h).permute(0, 2, 3, 1)


class VAE(nn.Module):

  def __init__(self):
    super().__init__()
    self.enc = nn.Linear(784, 512)
    self.mean, self.logvar = nn.Linear(512, 20), nn.Linear(512, 20)
    self.dec = nn.Linear(20, 512)
    self.out = nn.Linear(512, 784)

  def forward(self, x):
    h = F.relu(self.enc(x.flatten(1)))
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    logits = self.out(F.relu(self.dec(z))).view(x.shape)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(1)
    return (bce + kl).mean()


# --- train steps -----------------------------------------------------------


def _maybe_compile(fn, compiled: bool):
  # Static shapes: every model reuses the same step code with other shapes,
  # which would otherwise make dynamo switch to (slower, fragile) dynamic ones.
  return torch.compile(fn, dynamic=False) if compiled else fn


def _step(opt, loss_fn, x):
  """One optimiser step of `loss_fn(x)`: the train step torch is timed on."""
  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x)
    loss.backward()
    opt.step()
    return loss
  return step


def _supervised(model, x, loss_of, compiled, lr=1e-3):
  opt = torch.optim.Adam(model.parameters(), lr=lr)
  model.train()

  def loss_fn(x):
    return loss_of(model(x))

  loss_fn = _maybe_compile(loss_fn, compiled)

  return _step(opt, loss_fn, x)


def _images(n, shape, layout="nhwc"):
  x = torch.rand((n,) + shape)
  return x if layout == "nhwc" else x.permute(0, 3, 1, 2).contiguous()


def _classify(model, x, n, classes=10, compiled=False):
  y = torch.randint(0, classes, (n,))
  return _supervised(model, x, lambda out: F.cross_entropy(out, y), compiled)


def _binary(model, x, n, compiled=False):
  y = torch.randint(0, 2, (n,)).float()
  return _supervised(model, x, lambda out: F.binary_cross_entropy_with_logits(
      out[:, 0], y), compiled)


def _gan_step(n, compiled):
  g, d = Generator(), Discriminator()
  og = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  od = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  x = _images(n, (28, 28, 1), "nchw") * 2 - 1

  def d_loss(x, z):
    fake = g(z).detach()
    return F.softplus(-d(x)).mean() + F.softplus(d(fake)).mean()

  def g_loss(z):
    return F.softplus(-d(g(z))).mean()

  d_loss, g_loss = _maybe_compile(d_loss, compiled), _maybe_compile(g_loss, compiled)

  def step():
    od.zero_grad(set_to_none=True)
    ld = d_loss(x, torch.randn(n, 100))
    ld.backward()
    od.step()
    og.zero_grad(set_to_none=True)
    lg = g_loss(torch.randn(n, 100))
    lg.backward()  # also fills D's grads, which the next D step clears
    og.step()
    return lg

  return step


def _rbm_step(n, compiled):
  """CD-1 on a 784-500 Bernoulli RBM: free-energy gap gradient, momentum SGD."""
  w = (torch.randn(784, 500) * 0.01).requires_grad_()
  bv = torch.zeros(784, requires_grad=True)
  bh = torch.zeros(500, requires_grad=True)
  opt = torch.optim.SGD([w, bv, bh], lr=0.05, momentum=0.9)
  v = torch.rand(n, 784)

  def free_energy(v):
    return -v @ bv - F.softplus(v @ w + bh).sum(-1)

  def loss_fn(v):
    with torch.no_grad():
      h = torch.bernoulli(torch.sigmoid(v @ w + bh))
      v_neg = torch.bernoulli(torch.sigmoid(h @ w.T + bv))
    return free_energy(v).mean() - free_energy(v_neg).mean()

  loss_fn = _maybe_compile(loss_fn, compiled)

  return _step(opt, loss_fn, v)


def _recon(model, x, compiled):
  return _supervised(model, x, lambda out: F.binary_cross_entropy_with_logits(
      out, x, reduction="none").flatten(1).sum(1).mean(), compiled)


def build(name: str, batch: int, compiled: bool) -> StepFn | None:
  """One train step of jaxdl's model `name` at this batch size; None if absent."""
  torch.manual_seed(0)
  n = batch
  if name == "mlp":
    return _classify(MLP(), _images(n, (28, 28, 1)), n, compiled=compiled)
  if name == "cnn":
    return _classify(CNN(), _images(n, (32, 32, 3)), n, compiled=compiled)
  if name == "resnet":
    return _classify(ResNet(), _images(n, (32, 32, 3)), n, compiled=compiled)
  if name == "lstm_classifier":
    return _binary(LSTMClassifier(), torch.randint(1, 10000, (n, 100)), n, compiled)
  if name == "transformer_classifier":
    return _binary(TransformerClassifier(), torch.randint(1, 10000, (n, 128)), n,
                   compiled)
  if name == "transformer_lm":
    tokens = torch.randint(1, 10000, (n, 128))
    return _supervised(TransformerLM(), tokens, lambda out: F.cross_entropy(
        out[:, :-1].reshape(-1, 10000), tokens[:, 1:].reshape(-1)), compiled)
  if name == "dcgan":
    return _gan_step(n, compiled)
  if name == "rbm":
    return _rbm_step(n, compiled)
  if name == "dbn_classifier":
    return _classify(DBN(), _images(n, (28, 28, 1)), n, compiled=compiled)
  if name == "dense_autoencoder":
    return _recon(DenseAE(), _images(n, (28, 28, 1)), compiled)
  if name == "conv_autoencoder":
    return _recon(ConvAE(), _images(n, (28, 28, 1)), compiled)
  if name == "vae":
    model = VAE()
    return _supervised(model, _images(n, (28, 28, 1)), lambda loss: loss, compiled)
  return None


def version() -> str:
  return f"torch {torch.__version__}, {torch.get_num_threads()} threads"


if __name__ == "__main__":  # quick self-check: every step runs
  import time
  for m in ("mlp", "cnn", "resnet", "lstm_classifier", "transformer_classifier",
            "transformer_lm", "dcgan", "rbm", "dbn_classifier",
            "dense_autoencoder", "conv_autoencoder", "vae"):
    s = build(m, 16, False)
    t = time.perf_counter()
    v = float(s())
    print(f"{m}: loss {v:.4f} {1e3 * (time.perf_counter() - t):.1f} ms",
          flush=True)
    assert math.isfinite(v)
