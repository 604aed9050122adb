"""Approach 3's optimiser: the Chinchilla / Epoch AI fit of L(N, D) = E + A/N^alpha + B/D^beta.

Minimises sum_i w_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) with
scipy's L-BFGS-B (analytic gradient) from a grid of starts, then checks convergence.
"""

import contextlib
import ctypes
import functools
import os

import numpy as np
from scipy import optimize

from experiments.scaling import laws

HUBER_DELTA = 1e-3
_LBFGS_OPTIONS = {"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}
_OPENBLAS_THREAD_FNS = (
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
)


@functools.lru_cache(maxsize=1)
def _loaded_openblas() -> tuple:
  """(get, set) thread-count functions of every OpenBLAS loaded in this process (Linux)."""
  try:
    with open("/proc/self/maps") as f:
      paths = {line.split()[-1] for line in f
               if "openblas" in line.rsplit("/", 1)[-1] and line.split()[-1].startswith("/")}
  except OSError:
    return ()
  found = []
  for path in sorted(paths):
    try:
      lib = ctypes.CDLL(path)
    except OSError:
      continue
    for get, set_ in _OPENBLAS_THREAD_FNS:
      if hasattr(lib, get) and hasattr(lib, set_):
        found.append((getattr(lib, get), getattr(lib, set_)))
        break
  return tuple(found)


@contextlib.contextmanager
def single_threaded_blas():
  """Runs BLAS on one thread. L-BFGS-B's tiny BLAS calls are ~50x slower when OpenBLAS spins
  up its thread pool on a busy machine (measured: 20 ms vs 1 s per fit on 2 loaded cores).
  Uses threadpoolctl when installed, else OpenBLAS's own setter; a no-op elsewhere."""
  if os.environ.get("OPENBLAS_NUM_THREADS") == "1":
    yield
    return
  try:
    import threadpoolctl  # pylint: disable=import-outside-toplevel
  except ImportError:
    threadpoolctl = None
  if threadpoolctl is not None:
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
      yield
    return
  fns = _loaded_openblas()
  old = [get() for get, _ in fns]
  for _, set_ in fns:
    set_(1)
  try:
    yield
  finally:
    for (_, set_), n in zip(fns, old):
      set_(n)


def init_grid() -> np.ndarray:
  """Chinchilla's grid of (a, b, e, alpha, beta) starts: 6*6*5*5*5 = 4500 points."""
  ab = np.arange(0.0, 25.1, 5.0)
  e = np.arange(-1.0, 1.01, 0.5)
  ex = np.arange(0.0, 2.01, 0.5)
  mesh = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
  return np.stack([m.ravel() for m in mesh], axis=1)


def huber(r, delta: float = HUBER_DELTA):
  r = np.asarray(r, dtype=np.float64)
  return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def objective(theta, log_n, log_d, log_l, weights, delta=HUBER_DELTA):
  """sum_i w_i Huber_delta(log Lhat_i - log L_i) and its gradient in (a, b, e, alpha, beta)."""
  log_pred, p_3n = laws.log_loss_lse(theta, log_n, log_d)
  r = log_pred - log_l
  g_r = weights * np.clip(r, -delta, delta)
  grad = np.array([g_r @ p_3n[0], g_r @ p_3n[1], g_r @ p_3n[2],
                   -(g_r * p_3n[0]) @ log_n, -(g_r * p_3n[1]) @ log_d])
  return float(weights @ huber(r, delta)), grad


def grid_objective(thetas, log_n, log_d, log_l, weights, delta=HUBER_DELTA, chunk=512):
  """The objective at many thetas at once (no gradient), for screening starts."""
  out = np.empty(len(thetas))
  for s in range(0, len(thetas), chunk):
    t = thetas[s:s + chunk, :, None]
    u = np.stack([t[:, 0] - t[:, 3] * log_n, t[:, 1] - t[:, 4] * log_d,
                  np.broadcast_to(t[:, 2], (len(t), len(log_n)))], axis=1)
    r = np.logaddexp.reduce(u, axis=1) - log_l
    out[s:s + chunk] = huber(r, delta) @ weights
  return out


def fit_parametric(params, tokens, loss, *, weights=None, delta: float = HUBER_DELTA,
                   grid="full", extra_inits=None) -> dict:
  """Fits the law from runs; returns theta = (a, b, e, alpha, beta) and convergence facts.

  grid="full" starts L-BFGS from all 4500 points of `init_grid()` (Chinchilla's grid);
  an int k starts from the k grid points with the lowest initial objective (a cheap screen
  that lands in the same basin on well-posed data); 0 uses only `extra_inits`.
  The Huber terms are summed, not averaged (Besiroglu et al. 2024 trace Chinchilla's early
  stop to averaging) and the L-BFGS tolerances are tight.
  Convergence check: a second L-BFGS run from the best point. `converged` means it changed
  the objective by <= 1e-9 (relative), the parameters by <= 1e-3, and the gradient, relative
  to its largest possible size sum_i w_i delta (1 + |log N_i| + |log D_i|), is <= 1e-5.
  """
  log_n, log_d, log_l = (np.log(np.asarray(v, dtype=np.float64)) for v in (params, tokens, loss))
  w = np.ones_like(log_n) if weights is None else np.asarray(weights, dtype=np.float64)
  grid_pts = init_grid()
  if isinstance(grid, str):
    if grid != "full":
      raise ValueError(f"grid must be 'full' or a number of starts, got {grid!r}")
    starts = grid_pts
  elif int(grid) > 0:
    vals = grid_objective(grid_pts, log_n, log_d, log_l, w, delta)
    starts = grid_pts[np.argsort(vals, kind="stable")[:int(grid)]]
  else:
    starts = np.zeros((0, 5))
  if extra_inits is not None:
    starts = np.concatenate([np.atleast_2d(extra_inits), starts])
  if not len(starts):
    raise ValueError("fit_parametric has no starting points; pass grid > 0 or extra_inits")

  def fun(t):
    return objective(t, log_n, log_d, log_l, w, delta)

  def run(x0):
    with np.errstate(all="ignore"):
      return optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=_LBFGS_OPTIONS)

  best, n_failed = None, 0
  with single_threaded_blas():
    for x0 in starts:
      res = run(x0)
      if not np.isfinite(res.fun) or not np.all(np.isfinite(res.x)):
        n_failed += 1
      elif best is None or res.fun < best.fun:
        best = res
    if best is None:
      raise RuntimeError("every L-BFGS start diverged; check that the losses are sensible")
    refit = run(best.x)
  final = refit if refit.fun <= best.fun else best
  f, grad = fun(final.x)
  scale = float(w @ (delta * (1.0 + np.abs(log_n) + np.abs(log_d))))
  grad_rel = float(np.abs(grad).max() / scale)
  floor = 1e-6 * float(w.sum()) * delta * delta
  d_obj = abs(best.fun - refit.fun) / max(abs(best.fun), floor)
  d_theta = float(np.abs(refit.x - best.x).max())
  return {"theta": final.x, "objective": f, "grad": grad,
          "grad_norm": float(np.linalg.norm(grad)), "grad_rel": grad_rel,
          "refit_objective_change": d_obj, "refit_param_change": d_theta,
          "converged": bool(d_obj <= 1e-9 and d_theta <= 1e-3 and grad_rel <= 1e-5),
          "n_starts": len(starts), "n_failed": n_failed, "message": str(final.message)}
