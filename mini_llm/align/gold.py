"""The gold reward: a programmatic scorer the project treats as ground truth.

gold_reward(text) is VADER's compound sentiment score (Hutto & Gilbert 2014, the
`vaderSentiment` package, which ships its lexicon of ~7,500 rated words): the valence of the
known words, adjusted for negation ("not good"), intensifiers ("very"), "but", capitals and
exclamation marks, squashed into [-1, 1]. The DPO paper's controlled experiment steers toward
positive sentiment under a sentiment classifier; this is the same experiment with a scorer
that needs no model weights and gives the same score everywhere.

Range: -1 (most negative) .. +1 (most positive); 0 for text with no lexicon word, which is most
short speeches of a small character model.

Blind spots (what a policy optimized against it can exploit, and what it cannot see):
  - modern English: Shakespeare's "fie", "woe", "thee" are unknown or neutral; "kill" and
    "love" count, "slay" and "wooing" less or not at all;
  - no meaning: a speech of "love love good sweet" scores near 1, however senseless, and
    repeating positive words saturates it (reward hacking is one step away);
  - misspelled words (common in a character model's samples) score 0;
  - irony and context: "O happy dagger!" is positive.
"""

from ..errors import ConfigError

_analyzer = None


def gold_reward(text):
    """VADER's compound sentiment of `text`, in [-1, 1]."""
    global _analyzer
    if _analyzer is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError("the gold reward needs the vaderSentiment package "
                              "(pip install vaderSentiment)") from None
        _analyzer = SentimentIntensityAnalyzer()
    return _analyzer.polarity_scores(text)["compound"]
