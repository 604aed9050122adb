r"""The project's train step against a plain Flax/optax loop and a PyTorch loop, side by side.

  python -m experiments.bench_peers [--shapes=gpt2_256,gpt2_512,small] [--steps=5]
      [--repeats=5] [--impls=project,plain,torch] [--quick]

For each shape (batch 8 x 256 tokens unless --quick), three train steps of exactly the same
model and FLOPs: AdamW (b2 0.95, weight decay on matrices only), global-norm clipping at
1.0, mean token cross-entropy, float32:
  project  train.step.Trainer.train_step (scanned layers, sharding constraints, the
           non-finite guard, donated state): what `python -m train.main` runs;
  plain    a minimal Flax linen model + optax + jax.jit written here, as a user would;
  torch    a minimal PyTorch eager model + torch.optim.AdamW (when torch is installed).
The three are timed alternately, `--steps` steps per timing, `--repeats` times, after two
untimed (compiling) steps each; the table shows median tokens/s and the ratios
project/plain and project/torch. Interleaving makes the ratios fair on a busy machine;
the absolute figures are not. Parameter counts are checked equal before timing.

Shapes: gpt2_256 (d 256, 4 layers, 4 heads, vocab 4096) and gpt2_512 (d 512, 6 layers,
8 heads, vocab 8192) are GPT-2 style (LayerNorm, GELU 4d FFN, learned positions, tied
embeddings); small is the project's `small` preset style (RoPE, RMSNorm, SwiGLU, untied).
The last stdout line is one JSON object with every figure.
"""

import dataclasses
import math
import multiprocessing
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from experiments import bench_train
from model.config import ModelConfig
from train.config import Config, DataConfig, MeshConfig, TrainConfig
from train.step import Trainer

_FLAGS = flags.FlagValues()
flags.DEFINE_string("shapes", "gpt2_256,gpt2_512,small", "Comma-separated shapes (SHAPES).",
                    flag_values=_FLAGS)
flags.DEFINE_string("impls", "project,plain,torch", "Which implementations to time.",
                    flag_values=_FLAGS)
flags.DEFINE_integer("steps", 5, "Train steps per timing.", flag_values=_FLAGS)
flags.DEFINE_integer("repeats", 5, "Interleaved timings per implementation (median).",
                     flag_values=_FLAGS)
flags.DEFINE_integer("batch_size", 8, "Sequences per step.", flag_values=_FLAGS)
flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.", flag_values=_FLAGS)
flags.DEFINE_bool("quick", False, "Tiny shapes, 1 step x 1 repeat (for tests).",
                  flag_values=_FLAGS)
for _name in ("steps", "repeats", "batch_size", "seq_len"):
  flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be >= 1",
                           flag_values=_FLAGS)

_GPT2 = dict(activation="gelu", norm="layer", pos_encoding="learned", tie_embeddings=True,
             norm_eps=1e-5)
SHAPES = {
    "gpt2_256": ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, **_GPT2),
    "gpt2_512": ModelConfig(vocab_size=8192, d_model=512, n_layers=6, n_heads=8, **_GPT2),
    "small": ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4),
    # --quick
    "gpt2_tiny": ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, **_GPT2),
    "small_tiny": ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2),
}
QUICK_SHAPES = ("gpt2_tiny", "small_tiny")
IMPLS = ("project", "plain", "torch")
LEARNING_RATE, BETAS, WEIGHT_DECAY, CLIP = 3e-4, (0.9, 0.95), 0.1, 1.0


# -- the project ---------------------------------------------------------------------------

def project_step(model: ModelConfig, batch_size: int, seq_len: int, tokens: np.ndarray):
  """(step(), parameter count) for Trainer.train_step on one fixed batch."""
  config = Config(model=dataclasses.replace(model, max_len=max(model.max_len, seq_len)),
                  data=DataConfig(seq_len=seq_len),
                  train=TrainConfig(batch_size=batch_size, steps=10_000, warmup_steps=0,
                                    learning_rate=LEARNING_RATE, beta1=BETAS[0],
                                    beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
                                    grad_clip=CLIP),
                  mesh=MeshConfig(data=1))
  trainer = Trainer(config, bench_train.build_mesh({"data": 1}))
  state, frozen = trainer.init(0)
  batch = trainer.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  box = [state]

  def step():
    box[0], metrics = trainer.train_step(box[0], frozen, batch)
    return metrics["loss"]
  return step, sum(x.size for x in jax.tree.leaves(state.params))


# -- a plain Flax / optax loop -------------------------------------------------------------

def _rope(x_BLNH, theta: float = 10_000.0):
  h = x_BLNH.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angles_Lh = jnp.arange(x_BLNH.shape[1], dtype=jnp.float32)[:, None] * inv_freq
  sin, cos = jnp.sin(angles_Lh)[:, None, :], jnp.cos(angles_Lh)[:, None, :]
  x1, x2 = jnp.split(x_BLNH, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class _PlainBlock(nn.Module):
  c: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    c = self.c
    norm = (lambda: nn.LayerNorm(epsilon=c.norm_eps)) if c.norm == "layer" else (
        lambda: nn.RMSNorm(epsilon=c.norm_eps))
    b, l, d = x_BLD.shape
    dense = lambda n: nn.Dense(n, use_bias=False,
                               kernel_init=nn.initializers.normal(c.init_std))
    qkv = dense(3 * d)(norm()(x_BLD)).reshape(b, l, 3, c.n_heads, d // c.n_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if c.pos_encoding == "rope":
      q, k = _rope(q), _rope(k)
    att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x_BLD = x_BLD + dense(d)(att.reshape(b, l, d))
    h = norm()(x_BLD)
    if c.activation == "swiglu":
      gate, up = jnp.split(dense(2 * c.ffw_dim)(h), 2, axis=-1)
      h = nn.silu(gate) * up
    else:
      h = nn.gelu(dense(c.ffw_dim)(h))
    return x_BLD + dense(d)(h)


class _PlainLM(nn.Module):
  c: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL):
    c = self.c
    embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(c.init_std))
    x_BLD = embed(tokens_BL)
    if c.pos_encoding == "learned":
      table = self.param("pos", nn.initializers.normal(c.init_std), (c.max_len, c.d_model))
      x_BLD = x_BLD + table[:tokens_BL.shape[1]]
    for _ in range(c.n_layers):
      x_BLD = _PlainBlock(c)(x_BLD)
    x_BLD = (nn.LayerNorm(epsilon=c.norm_eps) if c.norm == "layer"
             else nn.RMSNorm(epsilon=c.norm_eps))(x_BLD)
    if c.tie_embeddings:
      return embed.attend(x_BLD)
    return nn.Dense(c.vocab_size, use_bias=False,
                    kernel_init=nn.initializers.normal(c.init_std))(x_BLD)


def plain_step(model: ModelConfig, tokens: np.ndarray):
  """(step(), parameter count) for a textbook Flax + optax + jit train step."""
  lm = _PlainLM(dataclasses.replace(model, max_len=max(model.max_len, tokens.shape[1] - 1)))
  inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
  params = jax.jit(lm.init)(jax.random.key(0), inputs)["params"]
  decay = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, x: x.ndim == 2 and "embedding" not in str(path[-1])
      and "pos" not in str(path[-1]), p)
  optimizer = optax.chain(optax.clip_by_global_norm(CLIP),
                          optax.adamw(LEARNING_RATE, *BETAS, weight_decay=WEIGHT_DECAY,
                                      mask=decay))

  def loss_fn(params):
    logits = lm.apply({"params": params}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step, donate_argnums=(0, 1))
  box = [params, optimizer.init(params)]

  def step():
    box[0], box[1], loss = train_step(box[0], box[1])
    return loss
  return step, sum(x.size for x in jax.tree.leaves(params))


# -- a plain PyTorch loop ------------------------------------------------------------------

def torch_step(model: ModelConfig, tokens: np.ndarray):
  """(step(), parameter count) for a minimal PyTorch eager train step; None without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn as tnn  # pylint: disable=g-import-not-at-top
    from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  c = model
  seq_len = tokens.shape[1] - 1
  torch.manual_seed(0)
  norm = (lambda: tnn.LayerNorm(c.d_model, eps=c.norm_eps)) if c.norm == "layer" else (
      lambda: tnn.RMSNorm(c.d_model, eps=c.norm_eps))
  hd = c.d_model // c.n_heads

  def rope(x):  # [B, N, L, H]
    inv_freq = 10_000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.arange(x.shape[2], dtype=torch.float32)[:, None] * inv_freq
    sin, cos = angles.sin(), angles.cos()
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

  class Block(tnn.Module):
    def __init__(self):
      super().__init__()
      self.n1, self.n2 = norm(), norm()
      self.qkv = tnn.Linear(c.d_model, 3 * c.d_model, bias=False)
      self.out = tnn.Linear(c.d_model, c.d_model, bias=False)
      width = 2 * c.ffw_dim if c.activation == "swiglu" else c.ffw_dim
      self.up = tnn.Linear(c.d_model, width, bias=False)
      self.down = tnn.Linear(c.ffw_dim, c.d_model, bias=False)

    def forward(self, x):
      b, l, d = x.shape
      q, k, v = (t.view(b, l, c.n_heads, hd).transpose(1, 2)
                 for t in self.qkv(self.n1(x)).split(d, dim=-1))
      if c.pos_encoding == "rope":
        q, k = rope(q), rope(k)
      att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(att.transpose(1, 2).reshape(b, l, d))
      h = self.up(self.n2(x))
      if c.activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        h = F.silu(gate) * up
      else:
        h = F.gelu(h)
      return x + self.down(h)

  class LM(tnn.Module):
    def __init__(self):
      super().__init__()
      self.embed = tnn.Embedding(c.vocab_size, c.d_model)
      self.pos = (tnn.Parameter(torch.zeros(seq_len, c.d_model))
                  if c.pos_encoding == "learned" else None)
      self.blocks = tnn.ModuleList([Block() for _ in range(c.n_layers)])
      self.norm = norm()
      self.head = None if c.tie_embeddings else tnn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, idx):
      x = self.embed(idx)
      if self.pos is not None:
        x = x + self.pos[:idx.shape[1]]
      for block in self.blocks:
        x = block(x)
      x = self.norm(x)
      return x @ self.embed.weight.t() if self.head is None else self.head(x)

  lm = LM()
  with torch.no_grad():  # the same init as the JAX models: N(0, init_std) matrices
    for p in lm.parameters():
      if p.dim() == 2:
        p.normal_(0.0, c.init_std)
  decay = [p for p in lm.parameters() if p.dim() == 2 and p is not lm.embed.weight
           and p is not lm.pos]
  rest = [p for p in lm.parameters() if all(p is not q for q in decay)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                           {"params": rest, "weight_decay": 0.0}], lr=LEARNING_RATE,
                          betas=BETAS)
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
  targets = torch.from_numpy(tokens[:, 1:].astype(np.int64))

  def step():
    opt.zero_grad(set_to_none=True)
    logits = lm(inputs)
    loss = F.cross_entropy(logits.view(-1, c.vocab_size), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), CLIP)
    opt.step()
    return loss.detach()
  # The learned position table here is seq_len rows (the others: max_len); count as theirs.
  extra = (model.max_len - seq_len) * c.d_model if lm.pos is not None else 0
  return step, sum(p.numel() for p in lm.parameters()) + max(extra, 0)


# -- timing --------------------------------------------------------------------------------

def _sync(value):
  if hasattr(value, "block_until_ready"):
    value.block_until_ready()
  return float(value)


def time_steps(step: Callable, steps: int) -> float:
  start = time.perf_counter()
  loss = None
  for _ in range(steps):
    loss = step()
  _sync(loss)
  return time.perf_counter() - start


def _worker(conn, impl: str, name: str, batch_size: int, seq_len: int):
  """One implementation in its own process: build, warm up, then time on request."""
  model = SHAPES[name]
  tokens = np.random.default_rng(0).integers(0, model.vocab_size, (batch_size, seq_len + 1),
                                             dtype=np.int32)
  builders = {"project": lambda: project_step(model, batch_size, seq_len, tokens),
              "plain": lambda: plain_step(model, tokens),
              "torch": lambda: torch_step(model, tokens)}
  built = builders[impl]()
  if built is None:
    conn.send(None)
    return
  step, count = built
  first_loss = _sync(step())  # compiles
  _sync(step())
  conn.send((count, first_loss))
  while (steps := conn.recv()) is not None:
    conn.send(time_steps(step, steps))


def benchmark_shape(name: str, impls: Sequence[str], batch_size: int, seq_len: int,
                    steps: int, repeats: int) -> dict:
  """Median tokens/s of each implementation on one shape, timed alternately.

  Each implementation runs in its own process (as a user would run it), so no framework's
  idle worker threads compete with another's timed steps; the others wait on a pipe.
  """
  ctx = multiprocessing.get_context("spawn")
  workers, counts, losses = {}, {}, {}
  try:
    for impl in impls:
      parent, child = ctx.Pipe()
      process = ctx.Process(target=_worker, args=(child, impl, name, batch_size, seq_len),
                            daemon=True)
      process.start()
      ready = parent.recv()  # builds one at a time: compilation is not timed
      if ready is None:
        process.join()
        continue
      workers[impl] = (process, parent)
      counts[impl], losses[impl] = ready
    if len(set(counts.values())) > 1:
      raise RuntimeError(f"{name}: parameter counts differ {counts}; the models differ")
    seconds = {impl: [] for impl in workers}
    for _ in range(repeats):
      for impl, (_, conn) in workers.items():
        conn.send(steps)
        seconds[impl].append(conn.recv())
  finally:
    for process, conn in workers.values():
      conn.send(None)
      process.join(timeout=60)
  tokens_per_step = batch_size * seq_len
  result = dict(shape=name, params=next(iter(counts.values())), batch_size=batch_size,
                seq_len=seq_len, steps=steps, repeats=repeats, first_loss=losses,
                tokens_per_s={impl: tokens_per_step * steps / float(np.median(s))
                              for impl, s in seconds.items()},
                seconds=seconds)
  tps = result["tokens_per_s"]
  for peer in ("plain", "torch"):
    if "project" in tps and peer in tps:
      result[f"project_over_{peer}"] = tps["project"] / tps[peer]
  # Same init scale: the first losses should all be near ln(vocab).
  result["ln_vocab"] = math.log(SHAPES[name].vocab_size)
  return result


def format_table(results: Sequence[dict]) -> str:
  lines = ["| shape | params | project tok/s | plain Flax tok/s | PyTorch tok/s | "
           "project/plain | project/PyTorch |", "|---|---|---|---|---|---|---|"]
  for r in results:
    tps = r["tokens_per_s"]
    cell = lambda k: f"{tps[k]:,.0f}" if k in tps else "-"
    ratio = lambda k: f"{r[k]:.2f}" if k in r else "-"
    lines.append(f"| {r['shape']} (b{r['batch_size']} x {r['seq_len']}) | "
                 f"{r['params'] / 1e6:.2f}M | {cell('project')} | {cell('plain')} | "
                 f"{cell('torch')} | {ratio('project_over_plain')} | "
                 f"{ratio('project_over_torch')} |")
  return "\n".join(lines)


def run(shapes: Sequence[str], impls: Sequence[str], batch_size: int, seq_len: int,
        steps: int, repeats: int) -> dict:
  for name in shapes:
    if name not in SHAPES:
      raise ValueError(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
  for impl in impls:
    if impl not in IMPLS:
      raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")
  results = []
  for name in shapes:
    result = benchmark_shape(name, impls, batch_size, seq_len, steps, repeats)
    print(format_table([result]).splitlines()[-1], flush=True)
    results.append(result)
  print(format_table(results), flush=True)
  summary = dict(benchmark="peers", **bench_train.device_info(), results=results)
  bench_train.print_summary(summary)
  return summary


def _run_from_flags() -> dict:
  f = _FLAGS
  split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
  if f.quick:
    return run(QUICK_SHAPES, split(f.impls), 2, 32, 1, 1)
  return run(split(f.shapes), split(f.impls), f.batch_size, f.seq_len, f.steps, f.repeats)


def main(argv: Sequence[str]) -> dict:
  """Parses argv (program name first) into this module's flags and runs; returns the summary."""
  return bench_train.parse_flags_and_run(_FLAGS, _run_from_flags, argv)


if __name__ == "__main__":
  bench_train.run_cli(_FLAGS, _run_from_flags, __doc__)
