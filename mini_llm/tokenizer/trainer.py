"""Learning merges from word counts: the pure-Python reference of the training hot loop.

The naive trainer recounts every adjacent pair of every word before each merge. This one counts
once, then keeps the counts current: merging (a, b) only changes the words that contain a
followed by b, so only those are visited (an index from pair to words finds them), and only the
pairs around each merge change count. A heap keeps the most frequent pair on top; entries whose
count has changed since they were pushed are stale and skipped when popped (lazy deletion).

Ties between equally frequent pairs go to the lexicographically greatest pair of byte strings
(as GPT-2-style trainers do), so training is deterministic. The C++ core (csrc/tokenizer/bpe_core.cpp)
does the same, step for step; tests check they agree.
"""

import heapq
from collections import defaultdict


class _Entry:
    """A heap entry. heapq pops the smallest item first, and we want the largest
    (count, left bytes, right bytes), so "less than" is turned around."""

    __slots__ = ("key", "pair")

    def __init__(self, count, left, right, pair):
        self.key = (count, left, right)
        self.pair = pair

    def __lt__(self, other):
        return self.key > other.key


def merge_pair(word, pair, new_id):
    """Replace each occurrence of `pair` in `word`, left to right, by new_id."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class PairTrainer:
    """word_counts: {word as bytes: count}. Token ids 0..255 are the bytes; each merge_next()
    merges the best pair into a new token (or into an existing token with the same bytes, so no
    two tokens ever spell the same string) and returns (left id, right id, merged id), or None
    when no word has two tokens left."""

    def __init__(self, word_counts):
        self.vocab = [bytes([b]) for b in range(256)]  # id -> bytes
        self.ids = {token: i for i, token in enumerate(self.vocab)}  # bytes -> id
        self.words = [list(word) for word in word_counts]  # each word as token ids
        self.counts = list(word_counts.values())
        self.pair_counts = defaultdict(int)
        self.where = defaultdict(set)  # pair -> words that hold (or once held) it
        for w, (word, n) in enumerate(zip(self.words, self.counts)):
            for pair in zip(word, word[1:]):
                self.pair_counts[pair] += n
                self.where[pair].add(w)
        self.heap = [self._entry(pair, n) for pair, n in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _entry(self, pair, count):
        return _Entry(count, self.vocab[pair[0]], self.vocab[pair[1]], pair)

    def merge_next(self):
        while self.heap:
            top = heapq.heappop(self.heap)
            if self.pair_counts.get(top.pair) == top.key[0]:  # else stale
                break
        else:
            return None
        pair = top.pair
        merged = self.vocab[pair[0]] + self.vocab[pair[1]]
        new_id = self.ids.get(merged)
        if new_id is None:
            new_id = self.ids[merged] = len(self.vocab)
            self.vocab.append(merged)
        change = defaultdict(int)  # pair -> count change, summed over the words touched
        for w in self.where.pop(pair):
            word, n = self.words[w], self.counts[w]
            new_word = merge_pair(word, pair, new_id)
            if len(new_word) == len(word):
                continue  # the pair left this word in an earlier merge
            for p in zip(word, word[1:]):
                change[p] -= n
            for p in zip(new_word, new_word[1:]):
                change[p] += n
                self.where[p].add(w)
            self.words[w] = new_word
        for p, delta in change.items():
            if delta:
                self.pair_counts[p] += delta
                if self.pair_counts[p] > 0:
                    heapq.heappush(self.heap, self._entry(p, self.pair_counts[p]))
                else:
                    del self.pair_counts[p]
        return (*pair, new_id)
