"""IsoFLOP sweep plans: a family of model shapes, budget-matched token counts, the LR rule.

Conventions, fixed for every sweep (the analysis compares runs only under one accounting):
- N is the total parameter count including embeddings, `flops.param_counts(model)["total"]`
  (for MoE members: "active", the parameters one token multiplies with).
- Training FLOPs per token are `flops.flops_per_token(model, seq_len, "exact")`: forward +
  backward, attention (QK^T and softmax@V over the full seq_len) and the output logits
  included, the input embedding lookup not (Chinchilla appendix F).
- A run's compute is tokens * FLOPs per token with tokens = steps * batch_size * seq_len, and
  it matches its budget C within `tolerance` (2%).
- The Kaplan-style ablation columns use 6 * (active) non-embedding parameters per token.
- Byte tokenizer: vocabulary 259 padded to 264 (a multiple of 8, what training itself would
  pad to). Padding further to 128 would add 45% of never-trained rows to N at these sizes.

Shape family: d_model from a list, n_layers = round(d_model / aspect) (at least 1), heads of
about `head_dim` (an even size dividing d_model), the SwiGLU FFN width of ModelConfig's
default (~8/3 d_model). MoE members keep the dense member's active width: each of the k
routed experts has width ffw_dim / k, so one token costs the same FLOPs as in the dense
member (plus the router).

Per budget C: N_opt is predicted from `tokens_per_param` (Chinchilla's ~20: C = F(N) * r * N
with F the exact FLOPs per token, interpolated over the grid), and the grid shapes closest
(least squares in ln N) to a geometric ladder of `shapes_per_budget` sizes spanning `spread`
(16x) around it are trained. Each IsoFLOP group uses one batch size: `batch_size`, halved
until every run of the group gets >= `min_steps` steps and its compute within `tolerance`.

Schedule of every run: linear warmup over ~`warmup_tokens_per_param` * N tokens (at least
`min_warmup_steps`, at most `warmup_fraction` of the steps), then cosine decay to
`lr_floor` * peak at exactly that run's last step. Learning rate rule (documented, fixed):
  lr(d_model) = lr_base * (lr_ref_width / d_model) ** lr_width_exponent
(1/width by default, as for Adam in muP-style transfer and GPT-3's model table). Every run
evaluates the same `eval_windows` validation windows (eval_batches = eval_windows / batch).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

from model import flops
from model.config import ModelConfig
from train.config import Config, DataConfig, MeshConfig, TrainConfig

BYTE_VOCAB = 264
KINDS = ("isoflop", "lr_check")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One member of the family: depth, width and number of heads."""
  n_layers: int
  d_model: int
  n_heads: int

  @property
  def name(self) -> str:
    return f"l{self.n_layers}d{self.d_model}"

  def model(self, base: ModelConfig) -> ModelConfig:
    """`base` with this shape; MoE bases get experts of width ffw_dim / experts_per_token."""
    model = dataclasses.replace(base, n_layers=self.n_layers, d_model=self.d_model,
                                n_heads=self.n_heads, n_kv_heads=0, d_head=0, d_ff=0,
                                d_ff_expert=0)
    if model.is_moe:
      width = _round_up(max(8, model.ffw_dim // model.experts_per_token), 8)
      model = dataclasses.replace(model, d_ff_expert=width)
    return model


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _n_heads(d_model: int, head_dim: int) -> int:
  """About d_model / head_dim heads, of an even size that divides d_model."""
  n = max(1, math.floor(d_model / head_dim + 0.5))
  while n > 1 and (d_model % n or (d_model // n) % 2):
    n -= 1
  return n


def shape_family(d_models: Sequence[int], aspect: int, head_dim: int) -> list:
  """Shapes with n_layers = round(d_model / aspect) >= 1 and heads of ~head_dim, by width."""
  if aspect <= 0 or head_dim <= 0:
    raise ValueError(f"aspect ({aspect}) and head_dim ({head_dim}) must be positive")
  bad = [d for d in d_models if d <= 0 or d % 2]
  if bad:
    raise ValueError(f"d_models {bad} must be positive and even (rotary embeddings); fix "
                     "--d_models")
  if len(set(d_models)) != len(d_models):
    raise ValueError(f"d_models has duplicates: {list(d_models)}")
  return [Shape(max(1, math.floor(d / aspect + 0.5)), d, _n_heads(d, head_dim))
          for d in sorted(d_models)]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """Everything a sweep's run list depends on (same spec -> same runs, ids and configs)."""
  name: str
  budgets: tuple
  d_models: tuple
  aspect: int = 32
  head_dim: int = 16
  base_model: ModelConfig = ModelConfig(vocab_size=BYTE_VOCAB)
  data: DataConfig = DataConfig(tokenizer="byte", seq_len=128)
  base_train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  batch_size: int = 64
  min_batch_size: int = 8
  shapes_per_budget: int = 5
  spread: float = 16.0
  min_spread: float = 8.0
  tokens_per_param: float = 20.0
  min_steps: int = 30
  tolerance: float = 0.02
  lr_base: float = 3e-3
  lr_ref_width: int = 128
  lr_width_exponent: float = 1.0
  lr_floor: float = 0.1
  warmup_tokens_per_param: float = 1.0
  warmup_fraction: float = 0.1
  min_warmup_steps: int = 3
  lr_check: tuple = (0.5, 2.0)
  eval_windows: int = 256
  checkpoints_per_run: int = 2
  run_prefix: str = ""
  seeds: int = 1
  seed_budgets: tuple = ()  # budgets that get the extra seeds; (): every budget
  lr_check_budgets: tuple = ()  # budgets whose middle shape gets the LR check; (): smallest

  def __post_init__(self):
    if not self.budgets or any(not c > 0 for c in self.budgets):
      raise ValueError(f"budgets must be positive FLOP counts, got {self.budgets}")
    if len(set(self.budgets)) != len(self.budgets):
      raise ValueError(f"budgets has duplicates: {self.budgets}")
    if self.shapes_per_budget < 3:
      raise ValueError(f"shapes_per_budget={self.shapes_per_budget}: an IsoFLOP parabola "
                       "needs >= 3 model sizes per budget")
    if self.spread < self.min_spread:
      raise ValueError(f"spread={self.spread} is below min_spread={self.min_spread}")
    if not 0 < self.tolerance < 0.5:
      raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance}")
    if self.min_batch_size < 1 or self.batch_size < self.min_batch_size:
      raise ValueError(f"need 1 <= min_batch_size ({self.min_batch_size}) <= batch_size "
                       f"({self.batch_size})")
    if self.eval_windows % self.batch_size:
      raise ValueError(f"eval_windows={self.eval_windows} must be a multiple of batch_size="
                       f"{self.batch_size} so every run evaluates the same validation windows")
    if not 0 < self.warmup_fraction <= 0.5:
      raise ValueError(f"warmup_fraction must be in (0, 0.5], got {self.warmup_fraction}")
    if self.lr_base <= 0 or self.tokens_per_param <= 0:
      raise ValueError("lr_base and tokens_per_param must be positive")
    if any(m <= 0 or m == 1 for m in self.lr_check):
      raise ValueError(f"lr_check multipliers must be positive and != 1, got {self.lr_check}")
    if self.seeds < 1:
      raise ValueError(f"seeds must be >= 1, got {self.seeds}")
    if any(b not in self.budgets for b in self.seed_budgets):
      raise ValueError(f"seed_budgets {self.seed_budgets} must be among the budgets "
                       f"{self.budgets}")
    if self.base_model.is_moe and self.base_model.moe_every != 1:
      raise ValueError("MoE sweeps use moe_every=1 so every depth of the family is valid")

  @property
  def seq_len(self) -> int:
    return self.data.seq_len

  def shapes(self) -> list:
    return shape_family(self.d_models, self.aspect, self.head_dim)

  def model(self, shape: Shape) -> ModelConfig:
    base = dataclasses.replace(self.base_model, max_len=max(self.base_model.max_len,
                                                            self.seq_len))
    return shape.model(base)


def learning_rate(spec: SweepSpec, d_model: int) -> float:
  """lr_base * (lr_ref_width / d_model) ** lr_width_exponent."""
  return spec.lr_base * (spec.lr_ref_width / d_model) ** spec.lr_width_exponent


def shape_stats(spec: SweepSpec, shape: Shape) -> dict:
  """N (active, incl. embeddings), its non-embedding part, total params, FLOPs per token."""
  model = spec.model(shape)
  counts = flops.param_counts(model)
  return {"params": counts["active"], "non_embedding_params": counts["active_non_embedding"],
          "total_params": counts["total"],
          "flops_per_token": flops.flops_per_token(model, spec.seq_len, "exact"),
          "non_embedding_flops_per_token": flops.flops_per_token(model, spec.seq_len, "6n")}


def expected_optimal_params(spec: SweepSpec, budget: float) -> float:
  """N with F(N) * tokens_per_param * N = budget, interpolated log-log over the grid.

  Outside the grid it extrapolates with C ~ N^2 from the nearest end.
  """
  stats = [shape_stats(spec, s) for s in spec.shapes()]
  log_n = np.log([s["params"] for s in stats])
  log_c = np.log([s["flops_per_token"] * spec.tokens_per_param * s["params"] for s in stats])
  order = np.argsort(log_c)
  log_n, log_c = log_n[order], log_c[order]
  x = math.log(budget)
  if x < log_c[0]:
    return float(math.exp(log_n[0] + 0.5 * (x - log_c[0])))
  if x > log_c[-1]:
    return float(math.exp(log_n[-1] + 0.5 * (x - log_c[-1])))
  return float(math.exp(np.interp(x, log_c, log_n)))


def _match_ladder(log_n: np.ndarray, targets: np.ndarray) -> list:
  """Indices i_1 < ... < i_k into sorted log_n minimising sum_j (log_n[i_j] - targets[j])^2."""
  n, k = len(log_n), len(targets)
  cost = np.full((k + 1, n + 1), np.inf)
  cost[0, :] = 0.0
  take = np.zeros((k + 1, n + 1), bool)
  for j in range(1, k + 1):
    for i in range(j, n + 1):
      skip = cost[j, i - 1]
      use = cost[j - 1, i - 1] + (log_n[i - 1] - targets[j - 1]) ** 2
      take[j, i] = use <= skip
      cost[j, i] = min(use, skip)
  chosen, j, i = [], k, n
  while j:
    if take[j, i]:
      chosen.append(i - 1)
      j -= 1
    i -= 1
  return chosen[::-1]


def select_shapes(spec: SweepSpec, budget: float) -> list:
  """The grid shapes closest (least squares in log N, order kept) to a geometric ladder of
  `shapes_per_budget` sizes spanning `spread` around the expected N_opt."""
  shapes = spec.shapes()
  if len(shapes) < spec.shapes_per_budget:
    raise ValueError(f"the grid has {len(shapes)} shapes but shapes_per_budget="
                     f"{spec.shapes_per_budget}; add widths to --d_models")
  log_n = np.log([shape_stats(spec, s)["params"] for s in shapes])
  order = np.argsort(log_n, kind="stable")
  n_opt = expected_optimal_params(spec, budget)
  targets = math.log(n_opt) + math.log(spec.spread) * np.linspace(
      -0.5, 0.5, spec.shapes_per_budget)
  chosen = [int(order[i]) for i in _match_ladder(log_n[order], targets)]
  spread = math.exp(log_n[chosen[-1]] - log_n[chosen[0]])
  if spread < spec.min_spread * (1 - 1e-9):
    raise ValueError(
        f"budget {budget:.3g}: the grid shapes around the expected N_opt={n_opt:.3g} span only "
        f"{spread:.1f}x in N (need >= {spec.min_spread:g}x); grid N range "
        f"{math.exp(log_n.min()):.3g}-{math.exp(log_n.max()):.3g}. Add widths to --d_models on "
        "the missing side or move --budgets")
  return [shapes[i] for i in chosen]


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the sweep: its identity, full config and compute accounting."""
  run_id: str
  index: int
  kind: str
  budget: float
  shape: Shape
  config: Config
  params: int
  non_embedding_params: int
  total_params: int
  flops_per_token: int
  non_embedding_flops_per_token: int
  lr_multiplier: float = 1.0

  @property
  def seed(self) -> int:
    return self.config.train.seed

  @property
  def steps(self) -> int:
    return self.config.train.steps

  @property
  def batch_size(self) -> int:
    return self.config.train.batch_size

  @property
  def tokens(self) -> int:
    return self.steps * self.batch_size * self.config.data.seq_len

  @property
  def flops(self) -> float:
    return float(self.tokens) * self.flops_per_token

  def record(self) -> dict:
    """JSON-able description (no config) for plan files and results."""
    t = self.config.train
    return {"run_id": self.run_id, "index": self.index, "kind": self.kind,
            "budget": self.budget, "shape": self.shape.name, "n_layers": self.shape.n_layers,
            "d_model": self.shape.d_model, "n_heads": self.config.model.n_heads,
            "params": self.params, "non_embedding_params": self.non_embedding_params,
            "total_params": self.total_params, "flops_per_token": self.flops_per_token,
            "non_embedding_flops_per_token": self.non_embedding_flops_per_token,
            "tokens": self.tokens, "flops": self.flops,
            "non_embedding_flops": float(self.tokens) * self.non_embedding_flops_per_token,
            "steps": t.steps, "batch_size": t.batch_size, "seq_len": self.config.data.seq_len,
            "learning_rate": t.learning_rate, "lr_multiplier": self.lr_multiplier,
            "warmup_steps": t.warmup_steps, "eval_windows": t.batch_size * t.eval_batches,
            "seed": t.seed}


def budget_label(budget: float) -> str:
  """1.5e12 -> '1.5e12' (filesystem friendly, 4 significant digits at most)."""
  mantissa, _, exponent = f"{budget:.3e}".partition("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _steps_for(spec: SweepSpec, budget: float, fpt: int, batch: int) -> int:
  return max(1, round(budget / fpt / (batch * spec.seq_len)))


def _group_batch(spec: SweepSpec, budget: float, stats: list) -> int:
  """Largest batch (batch_size halved) giving every run of the group >= min_steps steps and
  a compute within tolerance of the budget."""
  def ok(batch):
    for s in stats:
      steps = _steps_for(spec, budget, s["flops_per_token"], batch)
      error = steps * batch * spec.seq_len * s["flops_per_token"] / budget - 1
      if steps < spec.min_steps or abs(error) > spec.tolerance:
        return False
    return True
  batch = spec.batch_size
  while not ok(batch) and batch // 2 >= spec.min_batch_size and batch % 2 == 0:
    batch //= 2
  return batch


def _warmup_steps(spec: SweepSpec, params: int, steps: int, tokens_per_step: int) -> int:
  by_tokens = round(spec.warmup_tokens_per_param * params / tokens_per_step)
  cap = int(spec.warmup_fraction * steps)
  return max(min(spec.min_warmup_steps, steps - 1), min(by_tokens, cap))


def make_run(spec: SweepSpec, index: int, kind: str, budget: float, shape: Shape, stats: dict,
             batch: int, lr_multiplier: float = 1.0, seed: int = 0, run_id: str = "") -> RunSpec:
  """One run of `spec`'s family, schedule and data at `budget` (run_id: the default name)."""
  steps = _steps_for(spec, budget, stats["flops_per_token"], batch)
  if not run_id:
    run_id = f"{spec.run_prefix}c{budget_label(budget)}_{shape.name}"
    if kind == "lr_check":
      run_id += f"_lr{lr_multiplier:g}x"
    if seed:
      run_id += f"_s{seed}"
  if steps < spec.min_steps:
    raise ValueError(
        f"run {run_id}: only {steps} steps at batch {batch} x seq_len {spec.seq_len} (need >= "
        f"{spec.min_steps}); raise this budget, lower --seq_len or --min_batch_size, or drop "
        "the widest --d_models")
  tokens = steps * batch * spec.seq_len
  error = tokens * stats["flops_per_token"] / budget - 1
  if abs(error) > spec.tolerance:
    raise ValueError(f"run {run_id}: compute {tokens * stats['flops_per_token']:.4g} misses its "
                     f"budget {budget:.4g} by {100 * error:+.1f}% (> {100 * spec.tolerance:g}%); "
                     "raise --min_steps or lower --batch_size")
  base = spec.base_train
  train = dataclasses.replace(
      base, steps=steps, batch_size=batch,
      learning_rate=learning_rate(spec, shape.d_model) * lr_multiplier,
      warmup_steps=_warmup_steps(spec, stats["params"], steps, batch * spec.seq_len),
      lr_floor=spec.lr_floor, eval_every=0, eval_batches=spec.eval_windows // batch,
      checkpoint_every=max(1, math.ceil(steps / spec.checkpoints_per_run)), keep_checkpoints=1,
      log_every=max(1, steps // 5), samples=0, seed=seed)
  config = Config(model=spec.model(shape), data=spec.data, train=train, mesh=spec.mesh)
  return RunSpec(run_id=run_id, index=index, kind=kind, budget=float(budget), shape=shape,
                 config=config, lr_multiplier=lr_multiplier, **stats)


def group_batch(spec: SweepSpec, budget: float, stats: list) -> int:
  return _group_batch(spec, budget, stats)


def plan_sweep(spec: SweepSpec) -> list:
  """The deterministic run list: seeds, then budgets ascending, shapes by N; then the LR check.

  Seed s > 0 repeats every IsoFLOP run with train seed s (initialisation and data order) and
  run id suffix `_s<s>`; seed 0 keeps the plain ids, so a sweep can add seeds later and keep
  its finished runs; `seed_budgets` limits the extra seeds to some budgets. The LR check
  trains the middle shape of each `lr_check_budgets` budget (the smallest budget by default)
  at each `lr_check` multiplier, seed 0.
  """
  runs, lr_checks, groups = [], [], []
  for budget in sorted(spec.budgets):
    shapes = select_shapes(spec, budget)
    stats = [shape_stats(spec, s) for s in shapes]
    groups.append((budget, shapes, stats, _group_batch(spec, budget, stats)))
  for seed in range(spec.seeds):
    for budget, shapes, stats, batch in groups:
      if seed and spec.seed_budgets and budget not in spec.seed_budgets:
        continue
      for shape, s in zip(shapes, stats):
        runs.append(make_run(spec, len(runs), "isoflop", budget, shape, s, batch, seed=seed))
  budgets = [g[0] for g in groups]
  for target in (spec.lr_check_budgets or budgets[:1]) if spec.lr_check else ():
    if target not in budgets:
      raise ValueError(f"lr_check_budgets: {target:g} is not one of the budgets {budgets}")
    budget, shapes, stats, batch = groups[budgets.index(target)]
    mid = len(shapes) // 2
    lr_checks += [(budget, shapes[mid], stats[mid], batch, m) for m in spec.lr_check]
  for budget, shape, s, batch, m in lr_checks:
    runs.append(make_run(spec, len(runs), "lr_check", budget, shape, s, batch, m))
  ids = [r.run_id for r in runs]
  if len(set(ids)) != len(ids):
    raise ValueError(f"duplicate run ids in the plan: {ids}")
  return runs


def describe_plan(runs: Sequence[RunSpec]) -> str:
  """A fixed-width table of the plan, one run per line."""
  lines = [f"{'#':>3} {'run':<28}{'N':>10}{'D':>11}{'D/N':>7}{'C err':>7}{'steps':>7}"
           f"{'batch':>6}{'warm':>5}{'lr':>9}"]
  for r in runs:
    lines.append(f"{r.index:>3} {r.run_id:<28}{r.params:>10.3g}{r.tokens:>11.3g}"
                 f"{r.tokens / r.params:>7.1f}{100 * (r.flops / r.budget - 1):>+6.2f}%"
                 f"{r.steps:>7}{r.batch_size:>6}{r.config.train.warmup_steps:>5}"
                 f"{r.config.train.learning_rate:>9.2e}")
  return "\n".join(lines)
