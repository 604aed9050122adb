"""The parametric loss law L(N, D) = E + A/N^alpha + B/D^beta and its compute-optimal allocation.

Minimising L under a fixed budget C = k*N*D (k = 6 FLOPs per parameter per token for the usual
forward+backward count) gives the closed form of Hoffmann et al. 2022 (eq. 4):

  G = (alpha*A / (beta*B))^(1/(alpha+beta)),  a = beta/(alpha+beta),  b = alpha/(alpha+beta),
  N_opt = G * (C/k)^a,  D_opt = G^-1 * (C/k)^b.

E does not move the optimum. Everything here is plain numpy, float64, and broadcasts over C.
"""

from typing import Mapping

import numpy as np

# Hoffmann et al. 2022 ("Chinchilla"), section 3.3 / eq. 10: the rounded values printed in the
# body of the paper. (The TeX source carries more digits, e.g. E=1.6934, alpha=0.3392,
# beta=0.2849; Besiroglu et al. 2024 show the rounding itself biases predictions.)
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

# Besiroglu, Erdil, Barnett, You 2024, "Chinchilla Scaling: A replication attempt" (Epoch AI,
# arXiv:2404.10102): the same Huber/LSE fit redone on data reconstructed from the paper's
# figures. E is 1.8172 in their table (often quoted rounded as 1.82).
EPOCH_AI = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}

# Hoffmann et al. 2022, Table 2: a in N_opt ~ C^a and b in D_opt ~ C^b, with the 10th and 90th
# bootstrap percentiles (100 resamples of 80% of the runs), plus the table's Kaplan row.
CHINCHILLA_TABLE2 = {
    "approach1": {"name": "1. Minimum over training curves", "a": 0.50,
                  "a_interval": (0.488, 0.502), "b": 0.50, "b_interval": (0.501, 0.512)},
    "approach2": {"name": "2. IsoFLOP profiles", "a": 0.49,
                  "a_interval": (0.462, 0.534), "b": 0.51, "b_interval": (0.483, 0.529)},
    "approach3": {"name": "3. Parametric modelling of the loss", "a": 0.46,
                  "a_interval": (0.454, 0.455), "b": 0.54, "b_interval": (0.542, 0.543)},
    "kaplan": {"name": "Kaplan et al. (2020)", "a": 0.73, "a_interval": None, "b": 0.27,
               "b_interval": None},
}
CHINCHILLA_TABLE2_INTERVAL = "10th-90th bootstrap percentiles"

# Chinchilla itself: 70B parameters on 1.4T tokens (Table 1), i.e. ~20 tokens per parameter,
# at Gopher's budget of 5.76e23 FLOPs.
CHINCHILLA_MODEL = {"params": 70e9, "tokens": 1.4e12, "tokens_per_param": 20.0}
GOPHER_BUDGET = 5.76e23

LAW_KEYS = ("E", "A", "B", "alpha", "beta")


def _check_law(law: Mapping[str, float]) -> None:
  missing = [k for k in LAW_KEYS if k not in law]
  if missing:
    raise ValueError(f"scaling law is missing {missing}; give all of {LAW_KEYS}")
  for k in ("A", "B", "alpha", "beta"):
    if not np.isfinite(law[k]) or law[k] <= 0:
      raise ValueError(f"scaling law needs {k} > 0 for a finite compute optimum, got {law[k]}")


def loss(params, tokens, law: Mapping[str, float] = CHINCHILLA):
  """L(N, D) = E + A/N^alpha + B/D^beta."""
  n = np.asarray(params, dtype=np.float64)
  d = np.asarray(tokens, dtype=np.float64)
  return law["E"] + law["A"] * n ** -law["alpha"] + law["B"] * d ** -law["beta"]


def exponents(alpha: float, beta: float) -> tuple[float, float]:
  """(a, b) with N_opt ~ C^a, D_opt ~ C^b: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
  return beta / (alpha + beta), alpha / (alpha + beta)


def g_coefficient(law: Mapping[str, float]) -> float:
  """G = (alpha*A / (beta*B))^(1/(alpha+beta))."""
  _check_law(law)
  return float((law["alpha"] * law["A"] / (law["beta"] * law["B"]))
               ** (1.0 / (law["alpha"] + law["beta"])))


def compute_optimal(compute, law: Mapping[str, float] = CHINCHILLA,
                    flops_per_param_token: float = 6.0) -> dict:
  """Compute-optimal N, D, tokens/param and loss at budget(s) C, for C = k*N*D.

  Returns a dict of floats (or arrays when `compute` is an array) with keys
  N_opt, D_opt, tokens_per_param, loss, a, b, G.
  """
  _check_law(law)
  c = np.asarray(compute, dtype=np.float64)
  if np.any(~np.isfinite(c)) or np.any(c <= 0):
    raise ValueError(f"compute budgets must be positive and finite, got {compute}")
  if flops_per_param_token <= 0:
    raise ValueError(f"flops_per_param_token must be positive, got {flops_per_param_token}")
  a, b = exponents(law["alpha"], law["beta"])
  g = g_coefficient(law)
  n_opt = g * (c / flops_per_param_token) ** a
  d_opt = (c / flops_per_param_token) ** b / g
  out = {"N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt,
         "loss": loss(n_opt, d_opt, law), "a": a, "b": b, "G": g}
  if c.ndim == 0:
    out = {k: float(v) for k, v in out.items()}
  return out


def log_loss_lse(theta, log_params, log_tokens):
  """log L for theta = (a, b, e, alpha, beta): LSE(a - alpha log N, b - beta log D, e).

  This is the Chinchilla parameterisation (A = e^a, B = e^b, E = e^e), which keeps A, B, E
  positive and the log-loss numerically stable. Also returns the softmax weights of the three
  terms, which are the partial derivatives of log L with respect to a, b, e.
  """
  a, b, e, alpha, beta = theta
  u_3n = np.stack([a - alpha * log_params, b - beta * log_tokens,
                   np.full_like(log_params, e, dtype=np.float64)])
  m_n = u_3n.max(axis=0)
  w_3n = np.exp(u_3n - m_n)
  z_n = w_3n.sum(axis=0)
  return m_n + np.log(z_n), w_3n / z_n


def theta_to_law(theta) -> dict:
  a, b, e, alpha, beta = (float(t) for t in theta)
  return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
          "alpha": alpha, "beta": beta}


def law_to_theta(law: Mapping[str, float]) -> np.ndarray:
  return np.array([np.log(law["A"]), np.log(law["B"]), np.log(law["E"]),
                   law["alpha"], law["beta"]], dtype=np.float64)


# The loss frontier: along the compute-optimal path the law gives L_opt(C) = E + A' C^-gamma
# with gamma = alpha beta / (alpha + beta). Approaches 1 and 2 fit this form to their
# per-budget optimum losses, which gives them a loss prediction too.
FRONTIER_GAMMAS = np.geomspace(0.003, 1.5, 240)


def fit_loss_frontier(log_c_bg, loss_bg, mask_bg=None, gammas=FRONTIER_GAMMAS) -> dict:
  """L(C) = E + A (C / C_ref)^-gamma through the masked points of each row, by profile least
  squares: for each gamma on a grid, (E, A) is linear least squares; the best gamma with
  A > 0 and E >= 0 wins. Vectorised over rows (bootstrap resamples); rows with fewer than 3
  points or no valid gamma get NaN. C_ref is exp(mean log C) of row 0."""
  log_c = np.atleast_2d(np.asarray(log_c_bg, np.float64))
  y = np.atleast_2d(np.asarray(loss_bg, np.float64))
  m = np.ones_like(y, bool) if mask_bg is None else np.atleast_2d(mask_bg).astype(bool)
  m = m & np.isfinite(log_c) & np.isfinite(y)
  ref = float(np.nanmean(np.where(m[0], log_c[0], np.nan))) if m[0].any() else float(
      np.nanmean(log_c))
  x_bgk = np.exp(-gammas[None, None] * (np.where(m, log_c, ref) - ref)[..., None])
  w = m[..., None].astype(np.float64)
  y3 = np.where(m, y, 0.0)[..., None]
  sw, sx, sy = w.sum(1), (w * x_bgk).sum(1), (w * y3).sum(1)
  sxx, sxy = (w * x_bgk * x_bgk).sum(1), (w * x_bgk * y3).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    det = sw * sxx - sx * sx
    a = (sw * sxy - sx * sy) / det
    e = (sy - a * sx) / sw
    sse = (w * (y3 - e[:, None] - a[:, None] * x_bgk) ** 2).sum(1)
  valid = (a > 0) & (e >= 0) & (np.abs(det) > 1e-12 * sw * sxx) & (m.sum(1) >= 3)[:, None]
  sse = np.where(valid, sse, np.inf)
  best = np.argmin(sse, axis=1)
  rows = np.arange(len(y))
  ok = np.isfinite(sse[rows, best])
  return {"E": np.where(ok, e[rows, best], np.nan), "A": np.where(ok, a[rows, best], np.nan),
          "gamma": np.where(ok, gammas[best], np.nan), "log_c_ref": ref}


def frontier_loss(compute, frontier: Mapping) -> np.ndarray:
  """E + A (C / C_ref)^-gamma for a fitted frontier (arrays broadcast against C)."""
  log_c = np.log(np.asarray(compute, np.float64))
  return (np.asarray(frontier["E"]) + np.asarray(frontier["A"]) *
          np.exp(-np.asarray(frontier["gamma"]) * (log_c - frontier["log_c_ref"])))
