"""Chat templates: exact rendering, target pieces, validation and the JSON round trip."""

import json

import pytest

from model import chat
from model.tokenizer import ByteTokenizer

SINGLE = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
MULTI = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("name", sorted(chat.TEMPLATES))
def test_round_trip_through_json(name):
  template = chat.get_template(name)
  restored = chat.ChatTemplate.from_dict(json.loads(json.dumps(template.to_dict())))
  assert restored == template
  assert restored.render(MULTI) == template.render(MULTI)


def test_from_dict_rejects_unknown_and_missing_keys():
  data = chat.get_template("plain").to_dict()
  with pytest.raises(ValueError, match="unknown chat template key.*bos_text"):
    chat.ChatTemplate.from_dict(dict(data, bos_text="<s>"))
  del data["turn_suffix"]
  with pytest.raises(ValueError, match="missing key.*turn_suffix"):
    chat.ChatTemplate.from_dict(data)
  with pytest.raises(ValueError, match="must be strings"):
    chat.ChatTemplate.from_dict(dict(chat.get_template("qa").to_dict(), user_prefix=3))


def test_plain_template_text():
  template = chat.get_template("plain")
  prompt = "### Instruction:\nWhat is 2 + 2?\n\n### Response:\n"
  assert template.render_prompt(SINGLE) == prompt
  assert template.render_prompt(SINGLE[:1]) == prompt
  assert template.render_pairs(SINGLE) == [(prompt, False), ("4\n\n", True)]


@pytest.mark.parametrize("name", sorted(chat.TEMPLATES))
def test_prompt_pairs_are_a_prefix_of_render_pairs(name):
  template = chat.get_template(name)
  pairs, prompt = template.render_pairs(MULTI), template.prompt_pairs(MULTI)
  assert pairs[:len(prompt)] == prompt
  assert pairs[len(prompt):] == [("4" + template.turn_suffix, True)]
  assert template.render_prompt(MULTI).endswith(template.assistant_prefix)
  targets = [text for text, is_target in pairs if is_target]
  assert targets == ["Hello" + template.turn_suffix, "4" + template.turn_suffix]
  assert "".join(text for text, _ in pairs) == template.render(MULTI)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "assistant", "content": "c"}], "message 1 has role 'user'.*alternate"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
      {"role": "assistant", "content": "c"}], "message 1 has role 'system'"),
    ([{"role": "assistant", "content": "a"}], "message 0 has role 'assistant'"),
    ([{"role": "bot", "content": "a"}], "role 'bot'; use one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "text": "a"}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "a"}], "last message must be from the assistant"),
])
def test_render_pairs_rejects_bad_conversations(messages, match):
  with pytest.raises(ValueError, match=match):
    chat.get_template("qa").render_pairs(messages)


def test_prompt_needs_a_user_turn():
  with pytest.raises(ValueError, match="needs a user message"):
    chat.get_template("qa").render_prompt([{"role": "system", "content": "x"}])


def test_encode_prompt_and_cut_reply():
  template, tokenizer = chat.get_template("chatml"), ByteTokenizer()
  ids = chat.encode_prompt(tokenizer, template, chat.prompt_messages("Hi", system="S"))
  assert ids[0] == tokenizer.bos_id
  assert tokenizer.decode(ids[1:]) == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  assert template.cut_reply(" 42<|im_end|>\n<|im_start|>user") == "42"
  assert chat.get_template("qa").cut_reply("42\nQ: more") == "42"
  assert chat.get_template("plain").cut_reply("line one\nline two\n\n###") == "line one\nline two"


def test_unknown_template_names_the_choices():
  with pytest.raises(ValueError, match="choose one of.*chatml"):
    chat.get_template("alpaca2")
