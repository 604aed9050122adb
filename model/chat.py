"""Chat templates: how a list of messages becomes the text a model is trained on and decodes from.

A message is {"role": "system" | "user" | "assistant", "content": str}. Each turn renders as
`<role prefix> + content + turn_suffix`. A template is a frozen dataclass of plain strings,
recorded in a run directory as JSON (`to_dict`) and rebuilt at decode time (`from_dict`),
so training and decoding render the same text byte for byte.

`render_pairs` splits a conversation into (text, is_target) pieces: assistant replies and
their turn suffix are targets, everything else is context. `prompt_pairs` gives the same
pieces up to the final assistant prefix, so a prompt tokenized piece by piece at decode time
matches the tokens it was trained on exactly. No tokenizer is imported here: `encode_prompt`
takes any object with `encode` and `bos_id`.
"""

import dataclasses
from typing import Mapping, Sequence

ROLES = ("system", "user", "assistant")
Messages = Sequence[Mapping[str, str]]


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Prefixes per role plus one suffix closing every turn (the assistant's included)."""
  name: str
  system_prefix: str
  user_prefix: str
  assistant_prefix: str
  turn_suffix: str

  @property
  def stop_text(self) -> str:
    """The text that ends an assistant reply: the turn suffix without surrounding blanks."""
    return self.turn_suffix.strip() or self.turn_suffix

  def _prefix(self, role: str) -> str:
    return {"system": self.system_prefix, "user": self.user_prefix,
            "assistant": self.assistant_prefix}[role]

  def _pieces(self, messages: Messages) -> list[tuple[str, bool]]:
    pieces = []
    for message in messages:
      target = message["role"] == "assistant"
      pieces.append((self._prefix(message["role"]), False))
      pieces.append((message["content"] + self.turn_suffix, target))
    return pieces

  def render_pairs(self, messages: Messages) -> list[tuple[str, bool]]:
    """(text, is_target) pieces of a whole conversation ending with an assistant reply.

    Adjacent pieces with the same flag are merged and empty ones dropped, so a single-turn
    conversation is exactly [(render_prompt(messages), False), (reply + turn_suffix, True)].
    """
    validate_messages(messages, final_assistant=True)
    return _merge(self._pieces(messages))

  def prompt_pairs(self, messages: Messages) -> list[tuple[str, bool]]:
    """The pieces before the final assistant reply, ending with the assistant prefix.

    A trailing assistant message is ignored, so the same call serves a full training
    conversation and a prompt to decode from.
    """
    context = _context(messages)
    return _merge(self._pieces(context) + [(self.assistant_prefix, False)])

  def render_prompt(self, messages: Messages) -> str:
    """Everything before the final assistant reply, ending with the assistant prefix."""
    return "".join(text for text, _ in self.prompt_pairs(messages))

  def render(self, messages: Messages) -> str:
    """The full text of a conversation ending with an assistant reply."""
    return "".join(text for text, _ in self.render_pairs(messages))

  def cut_reply(self, generated: str) -> str:
    """A decoded continuation of `render_prompt` cut at the end of the reply, stripped."""
    stop = self.stop_text
    if stop and stop in generated:
      generated = generated[:generated.index(stop)]
    return generated.strip()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping) -> "ChatTemplate":
    """Rebuilds a template from `to_dict()`; unknown or missing keys are errors."""
    if not isinstance(data, Mapping):
      raise ValueError(f"a chat template must be a JSON object, got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
      raise ValueError(f"unknown chat template key(s) {unknown}; valid keys are {fields} "
                       "(was the run directory written by a newer version?)")
    missing = [f for f in fields if f not in data]
    if missing:
      raise ValueError(f"chat template is missing key(s) {missing}; it needs all of {fields}")
    bad = [f for f in fields if not isinstance(data[f], str)]
    if bad:
      raise ValueError(f"chat template key(s) {bad} must be strings")
    return cls(**{f: data[f] for f in fields})


def _merge(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
  merged: list[tuple[str, bool]] = []
  for text, target in pieces:
    if not text:
      continue
    if merged and merged[-1][1] == target:
      merged[-1] = (merged[-1][0] + text, target)
    else:
      merged.append((text, target))
  return merged


def _context(messages: Messages) -> list[Mapping[str, str]]:
  """Validated messages without a trailing assistant reply; must end with a user turn."""
  validate_messages(messages, final_assistant=None)
  context = list(messages)
  if context[-1]["role"] == "assistant":
    context.pop()
  if not context or context[-1]["role"] != "user":
    raise ValueError("a prompt needs a user message before the assistant reply")
  return context


def validate_messages(messages: Messages, final_assistant: bool | None = True) -> None:
  """Raises a ValueError naming the fix unless `messages` is a well-formed conversation.

  Well formed: a non-empty list of {"role", "content"} objects with string content, an
  optional first "system" message, then "user" and "assistant" alternating from "user".
  `final_assistant` True requires the last message to be the assistant's (the reply to
  learn), False forbids it, None allows either.
  """
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
    raise ValueError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
  expected = "user"
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or set(message) - {"role", "content"} or \
        "role" not in message or "content" not in message:
      raise ValueError(f"message {i} must be an object with exactly 'role' and 'content', got "
                       f"{_short(message)}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
      raise ValueError(f"message {i} has role {role!r}; use one of {list(ROLES)}")
    if not isinstance(content, str):
      raise ValueError(f"message {i} content must be a string, got {type(content).__name__}")
    if role == "system" and i == 0:
      continue
    if role != expected:
      raise ValueError(
          f"message {i} has role {role!r} where {expected!r} was expected; after an optional "
          "first 'system' message, roles must alternate 'user', 'assistant', ... (merge "
          "consecutive messages of the same role)")
    expected = "assistant" if role == "user" else "user"
  last = messages[-1]["role"]
  if final_assistant and last != "assistant":
    raise ValueError(f"the last message must be from the assistant (the reply to learn), "
                     f"got {last!r}")
  if final_assistant is False and last == "assistant":
    raise ValueError("the last message must not be from the assistant (it is the prompt)")


def _short(value, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def prompt_messages(prompt: str, system: str | None = None) -> list[dict]:
  """Messages for the plain {"prompt", "response"} form: one user turn (after a system one)."""
  if not isinstance(prompt, str):
    raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
  messages = [{"role": "system", "content": system}] if system is not None else []
  return messages + [{"role": "user", "content": prompt}]


def encode_prompt(tokenizer, template: ChatTemplate, messages: Messages) -> list[int]:
  """Token ids a decoder starts from: bos (if any) then each prompt piece encoded separately.

  Matches the prompt part of training examples token for token.
  """
  ids = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
  for text, _ in template.prompt_pairs(messages):
    ids.extend(tokenizer.encode(text))
  return ids


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t for t in (
        ChatTemplate(name="plain", system_prefix="", user_prefix="### Instruction:\n",
                     assistant_prefix="### Response:\n", turn_suffix="\n\n"),
        ChatTemplate(name="chatml", system_prefix="<|im_start|>system\n",
                     user_prefix="<|im_start|>user\n", assistant_prefix="<|im_start|>assistant\n",
                     turn_suffix="<|im_end|>\n"),
        # Few tokens per turn: the default for tiny models trained on the embedded tasks.
        ChatTemplate(name="qa", system_prefix="", user_prefix="Q: ", assistant_prefix="A: ",
                     turn_suffix="\n"),
    )
}


def get_template(name: str) -> ChatTemplate:
  """The registered template called `name`."""
  if name not in TEMPLATES:
    raise ValueError(f"unknown chat template {name!r}; choose one of {sorted(TEMPLATES)}")
  return TEMPLATES[name]
