"""The chat format: role and end-of-turn tokens and one template (stage 5 fine-tunes on it).

A conversation turn is written

    <|user|>PROMPT<|end|><|assistant|>RESPONSE<|end|>

Each of the three markers is one token. They are added on top of any tokenizer (the character
one or BPE) by ChatTokenizer, with the ids after the base vocabulary, so a base model trained
without them keeps every id it knows and only gains rows (mini_llm.align.chat.grow_vocabulary).
"""

import re

from ..errors import DataError

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END)


def chat_template(prompt, response=None):
    """The text of one turn. Without a response: the prompt up to the assistant's marker,
    what a model is given to answer."""
    text = f"{USER}{prompt}{END}{ASSISTANT}"
    return text if response is None else f"{text}{response}{END}"


def parse_chat(text):
    """(prompt, response) of chat_template's text; response None if the text stops at the
    assistant's marker. The inverse of chat_template."""
    m = re.fullmatch(re.escape(USER) + "(.*?)" + re.escape(END + ASSISTANT) + "(?:(.*)" + re.escape(END) + ")?",
                     text, flags=re.DOTALL)
    if m is None:
        raise DataError(f"not a chat turn: {text[:60]!r}")
    return m.group(1), m.group(2)


class ChatTokenizer:
    """A tokenizer (CharTokenizer or BPE) plus the chat markers, each one id after the base
    vocabulary. Text is cut at the markers first, so no marker is ever split or merged and a
    prompt encodes the same alone as at the start of a whole turn."""

    def __init__(self, base, specials=CHAT_TOKENS):
        self.base, self.specials = base, tuple(specials)
        self.special_ids = {s: base.vocab_size + i for i, s in enumerate(self.specials)}
        self._split = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")")

    @property
    def vocab_size(self):
        return self.base.vocab_size + len(self.specials)

    @property
    def end_id(self):
        return self.special_ids[END]

    def encode(self, text):
        ids = []
        for i, part in enumerate(self._split.split(text)):  # odd parts are the markers
            if i % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.base.encode(part))
        return ids

    def decode(self, ids):
        text, run = [], []
        for i in ids:
            if i >= self.base.vocab_size:
                text.append(self.base.decode(run))
                run = []
                text.append(self.specials[i - self.base.vocab_size])
            else:
                run.append(i)
        return "".join(text) + self.base.decode(run)

    def to_dict(self):
        return {"kind": "chat", "base": self.base.to_dict(), "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d, base_from_dict):
        """`base_from_dict` rebuilds the base tokenizer (tokenizer_from_dict, which calls this)."""
        return cls(base_from_dict(d["base"]), d["specials"])


def with_chat_tokens(tokenizer):
    """The tokenizer with the chat markers: itself if it has them already."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


