"""Encoding ordinary text (no special tokens in it) into token ids: the pure-Python reference.

Each piece from the pre-tokenizer starts as its UTF-8 bytes, one token per byte; then, again and
again, the adjacent pair whose merge was learned earliest (lowest rank) is merged, the leftmost
one where that pair occurs several times, until no adjacent pair has a merge. The C++ core
(csrc/tokenizer/bpe_core.cpp) does the same; tests check that both give the same ids.

Text repeats its words, so a cache from piece to ids does most of the work: on English prose
nearly every piece after the first few thousand is a cache hit.
"""

from .pretokenize import pretokenize

CACHE_SIZE = 1 << 16  # pieces remembered; the cache is emptied when full, so memory stays bounded
NO_MERGE = float("inf")


class Encoder:
    """tokens: {bytes: id} of the ordinary tokens (every single byte among them);
    merges: [(left id, right id, merged id)] in rank order."""

    def __init__(self, tokens, merges):
        self.tokens = tokens
        self.byte_ids = [tokens[bytes([b])] for b in range(256)]
        self.rank = {(left, right): rank for rank, (left, right, _) in enumerate(merges)}
        self.merged = [merged for _, _, merged in merges]
        self.cache = {}

    def encode(self, text):
        ids = []
        for piece in pretokenize(text):
            piece_ids = self.cache.get(piece)
            if piece_ids is None:
                if len(self.cache) >= CACHE_SIZE:
                    self.cache.clear()
                piece_ids = self.cache[piece] = self.encode_piece(piece.encode("utf-8"))
            ids.extend(piece_ids)
        return ids

    def encode_piece(self, data):
        # A piece that is itself a token is that token, as tiktoken does; merging its bytes gives
        # the same answer for every piece of GPT-2's vocabulary (tested), only slower.
        whole = self.tokens.get(data)
        if whole is not None:
            return [whole]
        ids = [self.byte_ids[b] for b in data]
        while len(ids) > 1:
            rank, i = min((self.rank.get(pair, NO_MERGE), i) for i, pair in enumerate(zip(ids, ids[1:])))
            if rank == NO_MERGE:
                break
            ids[i:i + 2] = [self.merged[rank]]
        return ids
