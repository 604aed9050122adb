"""Agreement statistics against hand-computed values and scipy, undefined cases, bias reports."""

import numpy as np
import pytest
from scipy import stats

from infer.eval import agreement, bias


def test_kappa_by_hand():
  # confusion [[20, 5], [10, 15]]: p_o = 35/50 = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5 -> 0.4
  a = ["y"] * 25 + ["n"] * 25
  b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
  assert agreement.cohen_kappa(a, b, ["y", "n"])["value"] == pytest.approx(0.4)
  assert agreement.percent_agreement(a, b)["value"] == pytest.approx(0.7)
  assert agreement.confusion_matrix(a, b, ["y", "n"]).tolist() == [[20, 5], [10, 15]]


def test_weighted_kappa_by_hand():
  # 3 ordered classes, a = [0,0,1,2], b = [0,1,2,2]; marginals a (2,1,1)/4, b (1,1,2)/4.
  # linear weights |i-j|/2: observed 0.5*(1/4 + 1/4) = 0.25;
  # expected sum_ij w_ij na_i nb_j / 16 = (2*1*0.5 + 2*2*1 + 1*1*0.5 + 1*2*0.5 + 1*1*1 +
  #                                       1*1*0.5) / 16 = 8/16 -> kappa = 1 - 0.25/0.5 = 0.5
  a, b = [0, 0, 1, 2], [0, 1, 2, 2]
  assert agreement.cohen_kappa(a, b, [0, 1, 2], "linear")["value"] == pytest.approx(0.5)
  # quadratic weights (|i-j|/2)^2: observed 0.25*(2/4) = 0.125; expected (2*1*0.25 + 2*2*1 +
  # 1*1*0.25 + 1*2*0.25 + 1*1*1 + 1*1*0.25)/16 = 6.5/16 -> 1 - 0.125*16/6.5 = 9/13
  assert agreement.cohen_kappa(a, b, [0, 1, 2], "quadratic")["value"] == pytest.approx(9 / 13)


def test_perfect_chance_and_one_class():
  assert agreement.cohen_kappa([1, 2, 3, 1], [1, 2, 3, 1], [1, 2, 3])["value"] == 1.0
  # independent raters with equal marginals: observed agreement = chance agreement
  assert agreement.cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1], [0, 1])["value"] == pytest.approx(0)
  one = agreement.cohen_kappa(["a"] * 5, ["a"] * 5, ["a", "b"])
  assert one["value"] is None and "undefined" in one["reason"]
  assert agreement.percent_agreement(["a"] * 5, ["a"] * 5)["value"] == 1.0


def test_correlations_equal_scipy_and_constant_is_undefined():
  rng = np.random.default_rng(0)
  x = rng.integers(1, 6, 30).astype(float)
  y = np.clip(x + rng.integers(-1, 2, 30), 1, 5)
  for kind, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr),
                   ("kendall", stats.kendalltau)):
    assert agreement.correlation(x, y, kind)["value"] == pytest.approx(fn(x, y)[0])
  const = agreement.correlation([3, 3, 3], [1, 2, 3], "pearson")
  assert const["value"] is None and "same value" in const["reason"]


def test_report_has_intervals_and_reasons():
  judge = ["a", "b", "tie", "a", "b", "a"]
  human = ["a", "b", "a", "a", "tie", "a"]
  out = agreement.report(judge, human, ["b", "tie", "a"], n_samples=200)
  assert out["percent_agreement"]["value"] == pytest.approx(4 / 6)
  assert out["cohen_kappa"]["low"] <= out["cohen_kappa"]["value"] <= out["cohen_kappa"]["high"]
  ranks = {"b": 0, "tie": 1, "a": 2}
  want = stats.spearmanr([ranks[v] for v in judge], [ranks[v] for v in human])[0]
  assert out["spearman"]["value"] == pytest.approx(want)
  flat = agreement.report(["a"] * 4, ["a"] * 4, ["b", "tie", "a"], n_samples=50)
  assert flat["cohen_kappa"]["value"] is None and flat["cohen_kappa"]["reason"]
  assert flat["pearson"]["value"] is None and flat["pearson"]["reason"]
  with pytest.raises(ValueError, match="not among the categories"):
    agreement.report(["x"], ["a"], ["a", "b"])


def _pair(ab, ba, verdict, len_a=1, len_b=1):
  return {"order_ab": {"position": ab}, "order_ba": {"position": ba}, "verdict": verdict,
          "len_a": len_a, "len_b": len_b, "system_a": "s", "system_b": "t", "key": "k"}


def test_position_and_length_bias():
  rows = [_pair("A", "A", "tie"), _pair("A", "B", "a"), _pair("B", "A", "b"),
          _pair(None, "A", None)]
  pb = bias.position_bias(rows)
  assert pb["rate"] == pytest.approx(1 / 3) and pb["n_pairs_both_orders"] == 3
  assert pb["first_position_rate"] == pytest.approx(5 / 7)
  longer = [_pair("A", "B", "a", 5, 1), _pair("B", "A", "b", 1, 4), _pair("A", "B", "a", 3, 2)]
  lb = bias.length_bias(longer, pairwise=True)
  assert lb["longer_wins_rate"] == 1.0 and lb["spearman"]["value"] > 0.8


def test_self_preference():
  rows = [dict(_pair("A", "B", "a"), key=str(i)) for i in range(4)]
  human = {"0": "a", "1": "b", "2": "b", "3": "tie"}
  out = bias.self_preference(rows, human, "s", pairwise=True)
  assert out["judge_win_rate"] == 1.0 and out["human_win_rate"] == pytest.approx(1.5 / 4)
  assert out["value"] == pytest.approx(1 - 1.5 / 4)
  assert bias.self_preference(rows, human, "nobody", True)["value"] is None
