"""Embedded instruction tasks with short checkable answers, generated the same on any machine.

A benchmark for fine-tuning methods that needs no download. Each task draws candidate
(prompt, answer) pairs from a numpy RNG seeded by (seed, task); a stable hash of the prompt
puts it in "train" or "heldout", so the two splits never share a prompt whatever the seed
or size asked for. Responses are the bare answers. Difficulty ranges from character maps a
~1M-parameter byte model learns in a few hundred steps (case, reverse) through small
arithmetic and sorting to `stdlib`, whose answers come from the Python standard library
(the embedded pretraining corpus) and cannot be inferred from the prompt alone.

Pure data and scoring, so it lives in infer/ where evaluation (infer/eval/) can use it;
fine-tuning imports it through train/data/tasks.py.
"""

import collections
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import tempfile
import zlib
from typing import Iterator, Sequence

import numpy as np
from absl import logging

__all__ = ["TASK_NAMES", "SPLITS", "HELDOUT_PER_MILLE", "NUMERIC_TASKS", "STDLIB_FUNCTIONS",
           "split_of", "stdlib_questions", "examples", "mixture", "score", "write_jsonl"]

TASK_NAMES = ("arithmetic", "reverse", "case", "count", "units", "sort", "stdlib")
SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 200  # share of each task's prompt space that is held out
NUMERIC_TASKS = ("arithmetic", "count", "units")
_MAX_MISSES = 5000  # consecutive repeated draws after which a task's split counts as exhausted

_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = "lmnrst"
_UNITS = (("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000),
          ("L", "mL", 1000), ("h", "min", 60), ("min", "s", 60), ("d", "h", 24),
          ("wk", "d", 7))

# Pure-Python functions whose signatures are the same on Python 3.10-3.12 and on every OS.
# Functions defined in C, wrapped in caches or differing by platform are left out.
STDLIB_FUNCTIONS = tuple("""
abc.abstractmethod base64.b16encode base64.b32encode base64.b64decode base64.b64encode
base64.urlsafe_b64decode base64.urlsafe_b64encode calendar.isleap calendar.leapdays
calendar.monthrange calendar.weekday collections.namedtuple colorsys.hls_to_rgb
colorsys.hsv_to_rgb colorsys.rgb_to_hls colorsys.rgb_to_hsv colorsys.rgb_to_yiq
colorsys.yiq_to_rgb contextlib.asynccontextmanager contextlib.contextmanager copy.copy
copy.deepcopy dataclasses.asdict dataclasses.astuple dataclasses.fields dataclasses.is_dataclass
difflib.get_close_matches difflib.ndiff difflib.unified_diff enum.unique fnmatch.filter
fnmatch.fnmatch fnmatch.fnmatchcase fnmatch.translate functools.cache functools.lru_cache
functools.singledispatch functools.total_ordering functools.update_wrapper functools.wraps
getpass.getuser glob.escape glob.has_magic gzip.decompress gzip.open heapq.merge heapq.nlargest
heapq.nsmallest html.escape html.unescape inspect.cleandoc inspect.getdoc inspect.getmembers
inspect.getsource inspect.isclass inspect.isfunction inspect.ismodule ipaddress.ip_address
ipaddress.ip_interface ipaddress.ip_network json.dump json.dumps json.load json.loads
linecache.checkcache linecache.clearcache linecache.getline mimetypes.guess_extension
mimetypes.guess_type os.getenv os.makedirs os.removedirs os.renames os.walk platform.machine
platform.node platform.python_version platform.system re.compile re.escape re.findall
re.finditer re.fullmatch re.match re.purge re.search re.split re.sub re.subn secrets.token_bytes
secrets.token_hex secrets.token_urlsafe shlex.join shlex.quote shlex.split shutil.copy
shutil.copy2 shutil.copyfile shutil.copymode shutil.get_terminal_size shutil.ignore_patterns
shutil.move shutil.which statistics.geometric_mean statistics.harmonic_mean statistics.mean
statistics.median statistics.median_high statistics.median_low statistics.mode
statistics.multimode statistics.pstdev statistics.pvariance statistics.quantiles
statistics.stdev statistics.variance string.capwords tarfile.is_tarfile tempfile.gettempdir
tempfile.mkdtemp tempfile.mkstemp textwrap.dedent textwrap.fill textwrap.indent
textwrap.shorten textwrap.wrap timeit.repeat timeit.timeit typing.cast typing.final
typing.get_args typing.get_origin typing.get_type_hints typing.no_type_check typing.overload
urllib.parse.parse_qs urllib.parse.quote urllib.parse.quote_plus urllib.parse.unquote
urllib.parse.unquote_plus urllib.parse.urldefrag urllib.parse.urlencode urllib.parse.urljoin
urllib.parse.urlparse uuid.uuid1 uuid.uuid3 uuid.uuid4 uuid.uuid5 warnings.filterwarnings
warnings.formatwarning warnings.showwarning warnings.simplefilter zipfile.is_zipfile
""".split())
_STDLIB_PARAM_QUESTIONS = 3  # ask for parameters 1..3 by position
_ORDINALS = ("first", "second", "third")


def split_of(task: str, prompt: str) -> str:
  """"train" or "heldout": a stable hash of (task, prompt), the same on every machine."""
  digest = hashlib.sha256(f"{task}\n{prompt}".encode("utf-8")).digest()
  held = int.from_bytes(digest[:8], "little") % 1000 < HELDOUT_PER_MILLE
  return "heldout" if held else "train"


def _int(rng: np.random.Generator, low: int, high: int) -> int:
  """A uniform int in [low, high]."""
  return int(rng.integers(low, high + 1))


def _word(rng: np.random.Generator) -> str:
  """A pronounceable lowercase pseudo-word of 4-7 letters (2-3 syllables, maybe a coda)."""
  syllables = [_ONSETS[_int(rng, 0, len(_ONSETS) - 1)] + _VOWELS[_int(rng, 0, 4)]
               for _ in range(_int(rng, 2, 3))]
  coda = _CODAS[_int(rng, 0, len(_CODAS) - 1)] if rng.random() < 0.5 else ""
  return "".join(syllables) + coda


def _arithmetic(rng) -> Iterator[tuple[str, str]]:
  while True:
    op = "+-*"[_int(rng, 0, 2)]
    high = 12 if op == "*" else 49
    a, b = _int(rng, 0, high), _int(rng, 0, high)
    if op == "-" and a < b:
      a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    yield f"What is {a} {op} {b}?", str(value)


def _reverse(rng) -> Iterator[tuple[str, str]]:
  while True:
    word = _word(rng)
    yield f"Reverse: {word}", word[::-1]


def _case(rng) -> Iterator[tuple[str, str]]:
  while True:
    word, kind = _word(rng), _int(rng, 0, 2)
    if kind == 0:
      yield f"Uppercase: {word}", word.upper()
    elif kind == 1:
      yield f"Lowercase: {word.upper()}", word
    else:
      yield f"Capitalize: {word}", word.capitalize()


def _count(rng) -> Iterator[tuple[str, str]]:
  while True:
    word = _word(rng)
    pool = word if rng.random() < 0.75 else _ONSETS + _VOWELS
    letter = pool[_int(rng, 0, len(pool) - 1)]
    yield f"How many '{letter}' in {word}?", str(word.count(letter))


def _units(rng) -> Iterator[tuple[str, str]]:
  """Every conversion of 1..50 of a unit, both ways, in a seeded order (a finite space)."""
  space = []
  for big, small, factor in _UNITS:
    for value in range(1, 51):
      space.append((f"Convert {value} {big} to {small}.", str(value * factor)))
      space.append((f"Convert {value * factor} {small} to {big}.", str(value)))
  for i in rng.permutation(len(space)):
    yield space[i]


def _sort(rng) -> Iterator[tuple[str, str]]:
  while True:
    values = [_int(rng, 0, 19) for _ in range(_int(rng, 3, 5))]
    yield "Sort: " + " ".join(map(str, values)), " ".join(map(str, sorted(values)))


def _simple_default(value) -> str | None:
  """The answer text for a default worth asking about: a non-None literal with a plain repr."""
  if isinstance(value, (bool, int, float)):
    return repr(value)
  if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", value):
    return value
  return None


@functools.lru_cache(maxsize=1)
def stdlib_questions() -> tuple[tuple[str, str], ...]:
  """(prompt, answer) pairs read with `inspect` from STDLIB_FUNCTIONS.

  Asks which module defines a function (when its name is unique in the list), how many
  parameters it takes, the name of each of its first parameters and its non-None simple
  defaults. Raises if the running Python disagrees with the list (see STDLIB_FUNCTIONS).
  """
  functions = []
  for qualname in STDLIB_FUNCTIONS:
    module_name, _, attr = qualname.rpartition(".")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not inspect.isfunction(fn) or fn.__module__ != module_name:
      raise RuntimeError(
          f"the stdlib task expects {qualname} to be a pure-Python function of {module_name}, "
          f"but on Python {sys.version.split()[0]} it is {fn!r}; remove it from "
          "STDLIB_FUNCTIONS in infer/eval/tasks.py")
    functions.append((module_name, attr, list(inspect.signature(fn).parameters.values())))
  name_counts = collections.Counter(attr for _, attr, _ in functions)
  questions = []
  for module_name, attr, params in functions:
    full = f"{module_name}.{attr}"
    if name_counts[attr] == 1:
      questions.append((f"Which module defines `{attr}`?", module_name))
    questions.append((f"How many parameters does `{full}` take?", str(len(params))))
    for ordinal, param in zip(_ORDINALS[:_STDLIB_PARAM_QUESTIONS], params):
      questions.append((f"What is the {ordinal} parameter of `{full}`?", param.name))
    for param in params:
      default = None if param.default is param.empty else _simple_default(param.default)
      if default is not None:
        questions.append((f"What is the default of `{param.name}` in `{full}`?", default))
  return tuple(questions)


def _stdlib(rng) -> Iterator[tuple[str, str]]:
  questions = stdlib_questions()
  for i in rng.permutation(len(questions)):
    yield questions[i]


_GENERATORS = dict(arithmetic=_arithmetic, reverse=_reverse, case=_case, count=_count,
                   units=_units, sort=_sort, stdlib=_stdlib)


def _check_task(task: str) -> None:
  if task not in _GENERATORS:
    raise ValueError(f"unknown task {task!r}; choose from {list(TASK_NAMES)}")


def examples(task: str, split: str, n: int, seed: int = 0) -> list[dict]:
  """`n` rows {"task", "prompt", "response", "answer"} of `task`'s `split`, distinct prompts.

  The same (task, split, n, seed) always gives the same rows, and a smaller n gives a
  prefix of a larger one. When a split has fewer than n distinct prompts, "train" repeats
  them (more epochs) and "heldout" returns the fewer rows, with a logged warning.
  """
  _check_task(task)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1),
                                                      zlib.crc32(task.encode())]))
  rows, seen, misses = [], set(), 0
  for prompt, answer in _GENERATORS[task](rng):
    if len(rows) >= n or misses >= _MAX_MISSES:
      break
    if prompt in seen or split_of(task, prompt) != split:
      misses += prompt in seen
      continue
    seen.add(prompt)
    misses = 0
    rows.append(dict(task=task, prompt=prompt, response=answer, answer=answer))
  if len(rows) < n:
    if split == "heldout" or not rows:
      logging.warning("task %s has only %d distinct %s prompts; returning those, not %d", task,
                      len(rows), split, n)
    else:
      logging.info("task %s has %d distinct train prompts; repeating them to make %d", task,
                   len(rows), n)
      rows = [rows[i % len(rows)] for i in range(n)]
  return rows


def mixture(split: str, n_per_task: int, seed: int = 0,
            tasks: Sequence[str] = TASK_NAMES) -> list[dict]:
  """`n_per_task` examples of each task, shuffled together by `seed`."""
  rows = [row for task in tasks for row in examples(task, split, n_per_task, seed)]
  order = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), 1])).permutation(
      len(rows))
  return [rows[i] for i in order]


def _first_line(text: str) -> str:
  text = str(text).strip()
  return text.split("\n", 1)[0].strip()


def _normalise(text: str) -> str:
  """First line, outer quotes/backticks and a trailing period removed, blanks collapsed."""
  text = _first_line(text)
  for _ in range(2):  # `name`. and 'name.' alike
    text = text.strip("`'\" ")
    text = text[:-1] if text.endswith(".") else text
  return " ".join(text.split())


def _number(text: str) -> float | None:
  text = _normalise(text).replace(",", "").replace("_", "")
  try:
    return float(text)
  except ValueError:
    return None


def _int_list(text: str) -> list[int] | None:
  parts = [p for p in re.split(r"[,\s]+", _normalise(text).strip("[]() ")) if p]
  try:
    return [int(p) for p in parts]
  except ValueError:
    return None


def score(task: str, prediction: str, answer: str) -> float:
  """1.0 if `prediction` matches `answer` after normalisation, else 0.0.

  Only the first line counts; quotes, backticks and a trailing period are ignored. Numeric
  tasks compare numbers ("1,000" == "1000.0"), sort compares the lists, case is case
  sensitive (it is the task), reverse and stdlib are not. Any other task name (a user's
  jsonl) gets exact match of the normalised text.
  """
  if task in NUMERIC_TASKS:
    got, want = _number(prediction), _number(answer)
    return float(got is not None and want is not None and abs(got - want) < 1e-9)
  if task == "sort":
    got = _int_list(prediction)
    return float(got is not None and got == _int_list(answer))
  got, want = _normalise(prediction), _normalise(answer)
  if task in ("reverse", "stdlib"):
    got, want = got.lower(), want.lower()
  return float(got == want)


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  """One JSON object per line, written atomically (a temporary file, then a rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
