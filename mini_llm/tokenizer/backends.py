"""Two implementations of the tokenizer's hot loops behind one interface:

  "python"  pretokenize.py, encoder.py, trainer.py: the readable reference
  "cpp"     the C++ core, mini_llm.tokenizer._bpe_core (csrc/tokenizer/bpe_core.cpp), built by
            `pip install -e .` where a C++ compiler is found
  "auto"    cpp where it was built, python otherwise

Each backend offers the same four things: pretokenize(text) -> pieces,
count_pretokens(docs) -> {piece bytes: count}, Encoder(tokens, merges) and
Trainer(word_counts). The tests run both and check that every result is identical.
"""

from functools import cache
from types import SimpleNamespace

from ..errors import ConfigError
from . import encoder, pretokenize, trainer

try:
    from . import _bpe_core
except ImportError:  # not built: no compiler or no pybind11 at install time
    _bpe_core = None

BACKENDS = ("auto", "python", "cpp")

PYTHON = SimpleNamespace(name="python", pretokenize=pretokenize.pretokenize,
                         count_pretokens=pretokenize.count_pretokens, Encoder=encoder.Encoder,
                         Trainer=trainer.PairTrainer)


@cache
def _cpp():
    classes = pretokenize.char_classes()  # ~0.15 s, once per process
    splitter = _bpe_core.Pretokenizer(classes)
    return SimpleNamespace(name="cpp", pretokenize=splitter.split, count_pretokens=splitter.count,
                           Encoder=lambda tokens, merges: _bpe_core.Encoder(tokens, merges, classes),
                           Trainer=_bpe_core.Trainer)


def get_backend(name="auto"):
    if name not in BACKENDS:
        raise ConfigError(f"unknown tokenizer backend {name!r}; backends: {', '.join(BACKENDS)}")
    if name == "python" or (name == "auto" and _bpe_core is None):
        return PYTHON
    if _bpe_core is None:
        raise ConfigError("the tokenizer's C++ core (mini_llm.tokenizer._bpe_core) is not built: "
                          "reinstall with `pip install -e .` where a C++ compiler is found")
    return _cpp()
