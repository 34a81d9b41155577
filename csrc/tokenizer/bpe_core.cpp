// The BPE tokenizer's hot loops in C++: the Python extension mini_llm.tokenizer._bpe_core.
//
// Each piece here has a pure-Python reference that is the specification, and the tests check
// that both give identical results:
//   Pretokenizer   GPT-2's split pattern by hand  <->  pretokenize.py (the `regex` module)
//   Encoder        pieces -> ids, merges by rank  <->  encoder.py
//   Trainer        incremental pair counts, heap  <->  trainer.py
// Read the Python first; the comments here say only what is particular to the C++.
//
// Not CUDA, and not part of the mini_llm._C kernel extension: this file needs only a C++20
// compiler and pybind11 (setup.py builds it as an optional extension).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

enum CharClass : uint8_t { OTHER = 0, LETTER = 1, DIGIT = 2, SPACE = 3 };

// Hash maps keyed by std::string that can be probed with a string_view, without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

inline uint64_t pair_key(int left, int right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}

// The UTF-8 of a Python str, without copying (Python keeps it alive with the str). Raises
// UnicodeEncodeError for lone surrogates, which have no UTF-8.
std::string_view utf8_of(const py::handle& text) {
  Py_ssize_t size;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
  if (data == nullptr) throw py::error_already_set();
  return {data, size_t(size)};
}

// ---------------------------------------------------------------------------------------------
// GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out as a scanner over UTF-8. The character classes come from Python's `regex` module
// (pretokenize.char_classes), so both sides agree on every code point.
class Pretokenizer {
 public:
  explicit Pretokenizer(std::string classes) : classes_(std::move(classes)) {
    if (classes_.size() != 0x110000) throw std::invalid_argument("classes: one byte per code point");
  }

  // Where the piece that starts at byte i of s ends.
  size_t piece_end(std::string_view s, size_t i) const {
    const size_t n = s.size();
    if (s[i] == '\'' && i + 1 < n) {  // contractions
      char c = s[i + 1];
      if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
      if (i + 2 < n) {
        std::string_view two = s.substr(i + 1, 2);
        if (two == "re" || two == "ve" || two == "ll") return i + 3;
      }
    }
    size_t j = i;  // a run of one class, after at most one space
    if (s[i] == ' ' && i + 1 < n && class_at(s, i + 1) != SPACE) j = i + 1;
    uint8_t cls = class_at(s, j);
    if (cls != SPACE) {
      while (j < n && class_at(s, j) == cls) j += char_len(s[j]);
      return j;
    }
    size_t end = i, last = i;  // whitespace: [i, end), its last character at `last`
    while (end < n && class_at(s, end) == SPACE) {
      last = end;
      end += char_len(s[end]);
    }
    if (end == n) return end;  // \s+(?!\S) at the end of the text
    return last > i ? last : end;  // leave one character to the word that follows, if we can
  }

  template <class F>
  void for_each_piece(std::string_view s, F&& f) const {
    for (size_t i = 0; i < s.size();) {
      size_t end = piece_end(s, i);
      f(s.substr(i, end - i));
      i = end;
    }
  }

  std::vector<std::string_view> split(std::string_view s) const {
    std::vector<std::string_view> pieces;
    for_each_piece(s, [&](std::string_view piece) { pieces.push_back(piece); });
    return pieces;
  }

 private:
  static size_t char_len(char lead) {
    auto b = uint8_t(lead);
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  }

  uint8_t class_at(std::string_view s, size_t i) const {
    auto b = [&](size_t k) { return uint32_t(uint8_t(s[i + k])); };
    uint32_t cp;
    switch (char_len(s[i])) {  // the text is valid UTF-8: it comes from a Python str
      case 1: cp = b(0); break;
      case 2: cp = (b(0) & 0x1F) << 6 | (b(1) & 0x3F); break;
      case 3: cp = (b(0) & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F); break;
      default: cp = (b(0) & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
    }
    return uint8_t(classes_[cp]);
  }

  std::string classes_;
};

// Counts the pieces of documents (no special tokens inside), without the GIL, so that Python
// threads can count chunks of a corpus in parallel.
py::dict count_pretokens(const Pretokenizer& pretokenizer, const py::list& docs) {
  std::vector<std::string_view> texts;
  for (const py::handle& doc : docs) texts.push_back(utf8_of(doc));
  StringMap<int64_t> counts;
  {
    py::gil_scoped_release released;
    for (std::string_view text : texts)
      pretokenizer.for_each_piece(text, [&](std::string_view piece) {
        auto it = counts.find(piece);
        if (it == counts.end()) counts.emplace(std::string(piece), 1);
        else ++it->second;
      });
  }
  py::dict out;
  for (const auto& [piece, n] : counts) out[py::bytes(piece)] = n;
  return out;
}

// ---------------------------------------------------------------------------------------------
class Encoder {
 public:
  static constexpr size_t CACHE_SIZE = 1 << 16;  // as encoder.py

  Encoder(const py::dict& tokens, const std::vector<std::tuple<int, int, int>>& merges,
          std::string classes)
      : pretokenizer_(std::move(classes)) {
    for (const auto& [token, id] : tokens) tokens_.emplace(token.cast<std::string>(), id.cast<int>());
    for (int b = 0; b < 256; ++b) byte_ids_[b] = tokens_.at(std::string(1, char(b)));
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      auto [left, right, merged] = merges[rank];
      ranks_.emplace(pair_key(left, right), std::make_pair(int(rank), merged));
    }
  }

  std::vector<int> encode(const py::str& text) {
    std::vector<int> ids;
    pretokenizer_.for_each_piece(utf8_of(text), [&](std::string_view piece) {
      auto it = cache_.find(piece);
      if (it == cache_.end()) {
        if (cache_.size() >= CACHE_SIZE) cache_.clear();
        it = cache_.emplace(std::string(piece), encode_piece(piece)).first;
      }
      ids.insert(ids.end(), it->second.begin(), it->second.end());
    });
    return ids;
  }

  std::vector<int> encode_piece(std::string_view data) const {
    if (auto whole = tokens_.find(data); whole != tokens_.end()) return {whole->second};
    std::vector<int> ids;
    for (char c : data) ids.push_back(byte_ids_[uint8_t(c)]);
    // rank[i]: the rank of merging ids[i] with ids[i + 1]; updated only around each merge
    std::vector<int> rank(ids.size() > 1 ? ids.size() - 1 : 0);
    for (size_t i = 0; i < rank.size(); ++i) rank[i] = rank_of(ids[i], ids[i + 1]);
    while (!rank.empty()) {
      auto best = std::min_element(rank.begin(), rank.end());  // the leftmost lowest rank
      if (*best == INT_MAX) break;
      size_t i = best - rank.begin();
      ids[i] = ranks_.at(pair_key(ids[i], ids[i + 1])).second;
      ids.erase(ids.begin() + i + 1);
      rank.erase(rank.begin() + i);
      if (i > 0) rank[i - 1] = rank_of(ids[i - 1], ids[i]);
      if (i < rank.size()) rank[i] = rank_of(ids[i], ids[i + 1]);
    }
    return ids;
  }

 private:
  int rank_of(int left, int right) const {
    auto it = ranks_.find(pair_key(left, right));
    return it == ranks_.end() ? INT_MAX : it->second.first;
  }

  Pretokenizer pretokenizer_;
  StringMap<int> tokens_;
  int byte_ids_[256];
  std::unordered_map<uint64_t, std::pair<int, int>> ranks_;  // pair -> (rank, merged id)
  StringMap<std::vector<int>> cache_;
};

// ---------------------------------------------------------------------------------------------
class Trainer {
 public:
  explicit Trainer(const py::dict& word_counts) {
    for (int b = 0; b < 256; ++b) add_token(std::string(1, char(b)));
    for (const auto& [word, n] : word_counts) {
      std::vector<int> ids;  // the byte values are the ids of the byte tokens
      for (char c : word.cast<std::string>()) ids.push_back(uint8_t(c));
      words_.push_back(std::move(ids));
      counts_.push_back(n.cast<int64_t>());
    }
    for (int w = 0; w < int(words_.size()); ++w) {
      const auto& word = words_[w];
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        uint64_t key = pair_key(word[i], word[i + 1]);
        pair_counts_[key] += counts_[w];
        where_[key].push_back(w);  // may repeat w; repeats are skipped when visited
      }
    }
    for (const auto& [key, n] : pair_counts_) heap_.push({n, key});
    visited_.assign(words_.size(), -1);
  }

  py::object merge_next() {
    uint64_t key;
    while (true) {
      if (heap_.empty()) return py::none();
      Entry top = heap_.top();
      heap_.pop();
      auto it = pair_counts_.find(top.key);
      if (it != pair_counts_.end() && it->second == top.count) {  // else stale
        key = top.key;
        break;
      }
    }
    int left = int(key >> 32), right = int(uint32_t(key));
    std::string merged = vocab_[left] + vocab_[right];
    auto found = ids_.find(merged);
    int new_id = found != ids_.end() ? found->second : add_token(merged);

    ++step_;
    std::unordered_map<uint64_t, int64_t> change;
    std::vector<int> new_word;
    for (int w : where_[key]) {
      if (visited_[w] == step_) continue;
      visited_[w] = step_;
      auto& word = words_[w];
      new_word.clear();
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == left && word[i + 1] == right) {
          new_word.push_back(new_id);
          i += 2;
        } else {
          new_word.push_back(word[i++]);
        }
      }
      if (new_word.size() == word.size()) continue;  // the pair left this word earlier
      int64_t n = counts_[w];
      for (size_t i = 0; i + 1 < word.size(); ++i) change[pair_key(word[i], word[i + 1])] -= n;
      for (size_t i = 0; i + 1 < new_word.size(); ++i) {
        uint64_t p = pair_key(new_word[i], new_word[i + 1]);
        change[p] += n;
        // only pairs with the new token are new to this word: w is already listed for the rest
        if (new_word[i] == new_id || new_word[i + 1] == new_id) where_[p].push_back(w);
      }
      word.swap(new_word);
    }
    where_.erase(key);
    for (const auto& [p, delta] : change) {
      if (delta == 0) continue;
      int64_t& n = pair_counts_[p];
      n += delta;
      if (n > 0) heap_.push({n, p});
      else pair_counts_.erase(p);
    }
    return py::make_tuple(left, right, new_id);
  }

  std::vector<py::bytes> vocab() const {
    return std::vector<py::bytes>(vocab_.begin(), vocab_.end());
  }

 private:
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  // "a < b" when a's (count, left bytes, right bytes) is smaller: the queue's top is the largest.
  struct Less {
    const std::vector<std::string>* vocab;
    bool operator()(const Entry& a, const Entry& b) const {
      if (a.count != b.count) return a.count < b.count;
      const std::string& al = (*vocab)[a.key >> 32];
      const std::string& bl = (*vocab)[b.key >> 32];
      if (al != bl) return al < bl;
      return (*vocab)[uint32_t(a.key)] < (*vocab)[uint32_t(b.key)];
    }
  };

  int add_token(const std::string& token) {
    vocab_.push_back(token);
    return ids_[token] = int(vocab_.size()) - 1;
  }

  std::vector<std::string> vocab_;
  StringMap<int> ids_;
  std::vector<std::vector<int>> words_;
  std::vector<int64_t> counts_;
  std::unordered_map<uint64_t, int64_t> pair_counts_;
  std::unordered_map<uint64_t, std::vector<int>> where_;
  std::priority_queue<Entry, std::vector<Entry>, Less> heap_{Less{&vocab_}};
  std::vector<int> visited_;  // the step at which each word was last visited
  int step_ = 0;
};

}  // namespace

PYBIND11_MODULE(_bpe_core, m) {
  m.doc() = "The BPE tokenizer's hot loops (see csrc/tokenizer/bpe_core.cpp)";
  py::class_<Pretokenizer>(m, "Pretokenizer")
      .def(py::init<std::string>(), py::arg("classes"))
      .def("split", [](const Pretokenizer& p, const py::str& text) { return p.split(utf8_of(text)); })
      .def("count", &count_pretokens, py::arg("docs"));
  py::class_<Encoder>(m, "Encoder")
      .def(py::init<const py::dict&, const std::vector<std::tuple<int, int, int>>&, std::string>(),
           py::arg("tokens"), py::arg("merges"), py::arg("classes"))
      .def("encode", &Encoder::encode, py::arg("text"))
      .def("encode_piece", [](const Encoder& e, const py::bytes& data) {
        return e.encode_piece(std::string_view(data));
      });
  py::class_<Trainer>(m, "Trainer")
      .def(py::init<const py::dict&>(), py::arg("word_counts"))
      .def("merge_next", &Trainer::merge_next)
      .def_property_readonly("vocab", &Trainer::vocab);
}
