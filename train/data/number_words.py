"""The embedded seq2seq task: numbers between English words, Portuguese words and digits.

A real input-to-output mapping that any machine can generate with no download: e.g.
"pt->en: trezentos e quarenta e dois" -> "three hundred forty-two". Numbers are split
into train and held-out sets by a hash of the number, so a held-out pair's number never
appears in training in any direction: scoring on it measures whether the model learned the
compositional rules (units, tens, hundreds, thousands, Portuguese "e" and "cem/cento"),
not memorised pairs.
"""

import hashlib

import numpy as np

LANGS = ("en", "pt", "digits")
DIRECTIONS = tuple(f"{a}->{b}" for a in LANGS for b in LANGS if a != b)
MAX_NUMBER = 9999

_EN_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
             "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_PT_SMALL = ("zero um dois três quatro cinco seis sete oito nove dez onze doze treze catorze "
             "quinze dezesseis dezessete dezoito dezenove").split()
_PT_TENS = "_ _ vinte trinta quarenta cinquenta sessenta setenta oitenta noventa".split()
_PT_HUNDREDS = ("_ cento duzentos trezentos quatrocentos quinhentos seiscentos setecentos "
                "oitocentos novecentos").split()


def english(n: int) -> str:
  """American English words: 342 -> "three hundred forty-two", 2005 -> "two thousand five"."""
  _check(n)
  if n < 20:
    return _EN_SMALL[n]
  if n < 100:
    tens, unit = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_SMALL[unit]}" if unit else "")
  if n < 1000:
    hundreds, rest = divmod(n, 100)
    return f"{_EN_SMALL[hundreds]} hundred" + (f" {english(rest)}" if rest else "")
  thousands, rest = divmod(n, 1000)
  return f"{english(thousands)} thousand" + (f" {english(rest)}" if rest else "")


def portuguese(n: int) -> str:
  """Brazilian Portuguese words: 342 -> "trezentos e quarenta e dois", 1500 -> "mil e
  quinhentos", 100 -> "cem", 101 -> "cento e um"."""
  _check(n)
  if n < 20:
    return _PT_SMALL[n]
  if n < 100:
    tens, unit = divmod(n, 10)
    return _PT_TENS[tens] + (f" e {_PT_SMALL[unit]}" if unit else "")
  if n < 1000:
    if n == 100:
      return "cem"
    hundreds, rest = divmod(n, 100)
    return _PT_HUNDREDS[hundreds] + (f" e {portuguese(rest)}" if rest else "")
  thousands, rest = divmod(n, 1000)
  head = "mil" if thousands == 1 else f"{portuguese(thousands)} mil"
  if not rest:
    return head
  # "e" joins the thousands to a rest below 100 or a round hundred: mil e vinte, mil e cem.
  joiner = " e " if rest < 100 or rest % 100 == 0 else " "
  return head + joiner + portuguese(rest)


def render(n: int, lang: str) -> str:
  if lang == "digits":
    return str(n)
  return english(n) if lang == "en" else portuguese(n)


def _check(n: int) -> None:
  if not 0 <= n <= MAX_NUMBER:
    raise ValueError(f"number {n} outside [0, {MAX_NUMBER}]")


def is_heldout(n: int, heldout_fraction: float) -> bool:
  """A fixed, machine-independent split of the numbers (sha256 of the decimal string)."""
  h = int.from_bytes(hashlib.sha256(str(n).encode()).digest()[:8], "big")
  return h / 2.0**64 < heldout_fraction


def pairs(split: str, n: int, seed: int, directions=DIRECTIONS, max_number: int = MAX_NUMBER,
          heldout_fraction: float = 0.1) -> list[dict]:
  """`n` rows {"source", "target", "task", "number"} of `split` ("train" | "heldout").

  Directions cycle so every one gets n / len(directions) rows; numbers are drawn with a
  generator seeded by (seed, split) from the split's numbers up to `max_number`.
  """
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
  unknown = [d for d in directions if d not in DIRECTIONS]
  if unknown or not directions:
    raise ValueError(f"unknown direction(s) {unknown or directions}; choose from {DIRECTIONS}")
  if not 0 < heldout_fraction < 1:
    raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
  _check(max_number)
  numbers = [k for k in range(max_number + 1)
             if is_heldout(k, heldout_fraction) == (split == "heldout")]
  rng = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), split == "heldout"]))
  drawn = rng.choice(numbers, size=n, replace=len(numbers) < n)
  rows = []
  for i, number in enumerate(drawn.tolist()):
    direction = directions[i % len(directions)]
    src, tgt = direction.split("->")
    rows.append({"source": f"{direction}: {render(number, src)}",
                 "target": render(number, tgt), "task": direction, "number": number})
  return rows
