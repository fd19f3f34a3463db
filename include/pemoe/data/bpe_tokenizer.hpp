/// @file bpe_tokenizer.hpp
/// @brief GPT-2 byte-level BPE tokenizer loaded from `vocab.json` + `merges.txt` (Hugging Face / OpenAI
/// files), token-for-token compatible with Hugging Face's `GPT2TokenizerFast`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/detail/utf8.hpp"

namespace pemoe {
namespace detail {

/// GPT-2's `bytes_to_unicode()`: byte b -> a printable code point (b itself for '!'..'~', U+00A1..U+00AC,
/// U+00AE..U+00FF; 256, 257, ... for the other bytes in increasing order). Every result is < U+0144.
inline const std::uint32_t (&gpt2_byte_to_unicode())[256] {
  struct Table {
    std::uint32_t map[256];
    Table() {
      std::uint32_t next = 256;
      for (std::uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        map[b] = printable ? b : next++;
      }
    }
  };
  static const Table table;
  return table.map;
}

/// Splits `text` (any bytes) into GPT-2 pre-tokens, the matches of
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, as [begin, end) byte
/// ranges appended to `out`. Works on code points (lenient UTF-8: a byte that is not valid UTF-8 is a code
/// point of its own, neither letter, number nor space, so it joins the punctuation alternative). The
/// pieces tile `text` exactly. O(bytes).
inline void gpt2_pretokenize(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& out) {
  // cps[k] and its byte offset off[k]; off[n] == text.size().
  std::vector<std::uint32_t> cps;
  std::vector<std::size_t> off;
  cps.reserve(text.size());
  off.reserve(text.size() + 1);
  for (std::size_t i = 0, len = 0; i < text.size(); i += len) {
    cps.push_back(utf8_decode_one(text, i, len));
    off.push_back(i);
  }
  off.push_back(text.size());
  const std::size_t n = cps.size();
  enum Cls : std::uint8_t { kSpace, kLetter, kNumber, kOther };
  std::vector<std::uint8_t> cls(n);
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint32_t c = cps[k];
    cls[k] = is_space(c) ? kSpace : is_letter(c) ? kLetter : is_number(c) ? kNumber : kOther;
  }
  const auto run = [&](std::size_t k, std::uint8_t c) {
    while (k < n && cls[k] == c) ++k;
    return k;
  };
  std::size_t i = 0;
  while (i < n) {
    std::size_t end = i;
    const std::uint32_t c = cps[i];
    const std::uint32_t c1 = i + 1 < n ? cps[i + 1] : 0;
    const std::uint32_t c2 = i + 2 < n ? cps[i + 2] : 0;
    if (c == '\'' && (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')) {
      end = i + 2;  // 's 't 'm 'd
    } else if (c == '\'' &&
               ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))) {
      end = i + 3;  // 're 've 'll
    } else if (cls[i] != kSpace || (c == ' ' && i + 1 < n && cls[i + 1] != kSpace)) {
      // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional ASCII space, then a run of one class.
      const std::size_t start = c == ' ' ? i + 1 : i;
      end = run(start, cls[start]);
    } else {
      // `\s+(?!\S)` then `\s+`: a whitespace run, less its last code point when a non-space follows and the
      // run is longer than one.
      const std::size_t stop = run(i, kSpace);
      end = (stop < n && stop - i > 1) ? stop - 1 : stop;
    }
    out.emplace_back(off[i], off[end]);
    i = end;
  }
}

/// Error in a tokenizer file: "<path>, line <n>: <message>".
inline IoError tokenizer_file_error(const std::string& path, std::size_t line, const std::string& message) {
  return IoError(concat(path, ", line ", line, ": ", message));
}

/// Reads a whole file (`IoError` naming it when it cannot be read).
inline std::string read_tokenizer_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(concat("cannot open tokenizer file '", path, "'"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(concat("cannot read tokenizer file '", path, "'"));
  return ss.str();
}

/// Parser of a flat JSON object of string keys and non-negative integer values (`vocab.json`), reporting
/// errors with their line. Strict JSON: escapes including surrogate pairs, no control characters in
/// strings, valid UTF-8, no trailing garbage. Never reads past the end of the input.
class VocabJsonParser {
 public:
  VocabJsonParser(std::string_view text, std::string path) : m_s(text), m_path(std::move(path)) {}

  /// Calls `on_entry(key, value, line)` for every entry in file order.
  template <class F>
  void parse(F&& on_entry) {
    skip_ws();
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++m_i;
    } else {
      for (;;) {
        skip_ws();
        const std::size_t line = m_line;
        std::string key = parse_string();
        skip_ws();
        expect(':');
        skip_ws();
        const std::int64_t value = parse_int();
        on_entry(std::move(key), value, line);
        skip_ws();
        if (peek() == ',') {
          ++m_i;
          continue;
        }
        expect('}');
        break;
      }
    }
    skip_ws();
    if (m_i != m_s.size()) fail("unexpected content after the closing '}'");
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw tokenizer_file_error(m_path, m_line, message);
  }

  int peek() const { return m_i < m_s.size() ? static_cast<unsigned char>(m_s[m_i]) : -1; }

  void skip_ws() {
    while (m_i < m_s.size()) {
      const char c = m_s[m_i];
      if (c == '\n') {
        ++m_line;
      } else if (c != ' ' && c != '\t' && c != '\r') {
        break;
      }
      ++m_i;
    }
  }

  void expect(char c) {
    if (peek() != static_cast<unsigned char>(c)) {
      fail(peek() < 0 ? concat("expected '", c, "', found the end of the file")
                      : concat("expected '", c, "', found '", static_cast<char>(peek()), "'"));
    }
    ++m_i;
  }

  std::uint32_t parse_hex4() {
    if (m_i + 4 > m_s.size()) fail("truncated \\u escape");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = m_s[m_i++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        fail("bad hex digit in a \\u escape");
      }
    }
    return v;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (m_i >= m_s.size()) fail("unterminated string");
      const auto c = static_cast<unsigned char>(m_s[m_i]);
      if (c == '"') {
        ++m_i;
        break;
      }
      if (c < 0x20) fail("control character in a string");
      if (c == '\\') {
        ++m_i;
        if (m_i >= m_s.size()) fail("unterminated string");
        const char e = m_s[m_i++];
        switch (e) {
          case '"':
            out += '"';
            break;
          case '\\':
            out += '\\';
            break;
          case '/':
            out += '/';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'n':
            out += '\n';
            break;
          case 'r':
            out += '\r';
            break;
          case 't':
            out += '\t';
            break;
          case 'u': {
            std::uint32_t cp = parse_hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (m_i + 2 > m_s.size() || m_s[m_i] != '\\' || m_s[m_i + 1] != 'u') {
                fail("high surrogate without a low surrogate in a \\u escape");
              }
              m_i += 2;
              const std::uint32_t lo = parse_hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate in a \\u escape");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            utf8_append(out, cp);
            break;
          }
          default:
            fail(concat("bad escape '\\", e, "' in a string"));
        }
        continue;
      }
      std::size_t len = 0;
      if (utf8_decode_one(m_s, m_i, len) == kInvalidCodePoint) fail("invalid UTF-8 in a string");
      out.append(m_s.substr(m_i, len));
      m_i += len;
    }
    return out;
  }

  std::int64_t parse_int() {
    if (peek() == '-') fail("a token id must be a non-negative integer");
    if (peek() < '0' || peek() > '9') fail("expected a token id (a non-negative integer)");
    std::int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      v = v * 10 + (m_s[m_i++] - '0');
      if (v > std::numeric_limits<TokenId>::max()) fail("token id does not fit in 31 bits");
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("a token id must be an integer");
    return v;
  }

  std::string_view m_s;
  std::string m_path;
  std::size_t m_i = 0;
  std::size_t m_line = 1;
};

}  // namespace detail

/// GPT-2 byte-level BPE tokenizer (Radford et al. 2019, "Language Models are Unsupervised Multitask
/// Learners"; Sennrich et al. 2016 BPE), loaded from the `vocab.json` + `merges.txt` pair of OpenAI / Hugging
/// Face, and matching Hugging Face's `GPT2TokenizerFast` token for token:
///
/// 1. Special tokens (default `<|endoftext|>`) are split out of the text first, leftmost-longest, exactly as
///    written (no stripping of neighbouring spaces), as HF does by default; `encode_ordinary` skips this.
/// 2. Each remaining segment is cut into pre-tokens by GPT-2's regex
///    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, implemented by hand over
///    code points. `\p{L}`/`\p{N}` come from generated tables of every Unicode general category L* / N*
///    (probed from HF tokenizers for every code point, see `detail::kUnicodeTablesSource`); `\s` is the
///    White_Space property as in Oniguruma. Bytes that are not valid UTF-8 (HF works on `str`, which cannot
///    hold them) are each one code point of the punctuation class, so any byte string encodes and
///    `decode(encode(b)) == b`.
/// 3. Each pre-token's bytes are mapped to GPT-2's printable byte alphabet and merged by rank (lowest rank
///    first, leftmost first among equal ranks — the priority-queue algorithm of HF `tokenizers`); results are
///    cached per pre-token (thread-safe; copies share the cache).
///
/// Loading is strict: every file error is an `IoError` naming the file and the line (bad JSON, a non-integer
/// or duplicate id, a duplicate token, a merge line that is not two tokens, a merge whose parts or result are
/// not in the vocabulary, a duplicate merge), and the vocabulary must hold the 256 single-byte tokens.
/// Special tokens missing from the vocabulary are appended after the largest id (as HF's
/// `add_special_tokens`). A vocabulary token made of characters outside the byte alphabet decodes to its own
/// UTF-8 text.
///
/// Complexity: encode O(bytes · log(pre-token length)), decode O(output bytes).
class Gpt2Tokenizer {
 public:
  /// Loads `vocab_json` and `merges_txt` (paths).
  static Gpt2Tokenizer from_files(const std::string& vocab_json, const std::string& merges_txt,
                                  std::vector<std::string> special_tokens = {"<|endoftext|>"}) {
    return from_strings(detail::read_tokenizer_file(vocab_json), detail::read_tokenizer_file(merges_txt),
                        std::move(special_tokens), vocab_json, merges_txt);
  }

  /// Loads `<dir>/vocab.json` and `<dir>/merges.txt`.
  static Gpt2Tokenizer from_directory(const std::string& dir,
                                      std::vector<std::string> special_tokens = {"<|endoftext|>"}) {
    return from_files(dir + "/vocab.json", dir + "/merges.txt", std::move(special_tokens));
  }

  /// Builds the tokenizer from the files' contents; `vocab_name` / `merges_name` name them in errors.
  static Gpt2Tokenizer from_strings(std::string_view vocab_json, std::string_view merges_txt,
                                    std::vector<std::string> special_tokens = {"<|endoftext|>"},
                                    const std::string& vocab_name = "vocab.json",
                                    const std::string& merges_name = "merges.txt") {
    Gpt2Tokenizer t;
    t.load_vocab(vocab_json, vocab_name);
    t.load_merges(merges_txt, merges_name);
    t.add_specials(std::move(special_tokens));
    return t;
  }

  /// One more than the largest id (vocabulary plus appended special tokens).
  std::size_t vocab_size() const { return static_cast<std::size_t>(m_max_id) + 1; }

  /// Number of merges (ranks 0..num_merges()-1).
  std::size_t num_merges() const { return m_merges.size(); }

  /// The id of vocabulary token `token` (GPT-2 alphabet, e.g. "Ġthe") or of a special token; -1 if none.
  TokenId token_to_id(std::string_view token) const {
    const auto it = m_token_to_id.find(std::string(token));
    return it == m_token_to_id.end() ? -1 : it->second;
  }

  /// The vocabulary string of `id` (`ConfigError` for an unknown id).
  const std::string& id_to_token(TokenId id) const { return entry(id).token; }

  /// The id of special token `name` (`ConfigError` when it is not a special token).
  TokenId special_id(std::string_view name) const {
    for (const auto& s : m_special) {
      if (s.first == name) return s.second;
    }
    throw ConfigError(detail::concat("Gpt2Tokenizer: no special token '", name, "'"));
  }

  /// The id of `<|endoftext|>` (`ConfigError` when it is not a special token).
  TokenId eos_id() const { return special_id("<|endoftext|>"); }

  /// True when `id` is a special token's id.
  bool is_special(TokenId id) const {
    for (const auto& s : m_special) {
      if (s.second == id) return true;
    }
    return false;
  }

  /// Token ids of `text` (any bytes); special tokens in the text become their ids (HF's default).
  std::vector<TokenId> encode(std::string_view text) const {
    std::vector<TokenId> ids;
    std::size_t seg = 0;
    std::size_t i = 0;
    while (i < text.size()) {
      std::size_t best_len = 0;
      TokenId best_id = -1;
      for (const auto& s : m_special) {
        if (s.first.size() > best_len && text.compare(i, s.first.size(), s.first) == 0) {
          best_len = s.first.size();
          best_id = s.second;
        }
      }
      if (best_len == 0) {
        ++i;
        continue;
      }
      encode_segment(text.substr(seg, i - seg), ids);
      ids.push_back(best_id);
      i += best_len;
      seg = i;
    }
    encode_segment(text.substr(seg), ids);
    return ids;
  }

  /// Token ids of `text` treating special-token strings as plain text.
  std::vector<TokenId> encode_ordinary(std::string_view text) const {
    std::vector<TokenId> ids;
    encode_segment(text, ids);
    return ids;
  }

  /// The bytes of `ids` (special tokens as their text unless `skip_special`); `ConfigError` for an unknown
  /// id. `decode(encode(b)) == b` for every byte string `b`.
  std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const {
    std::string out;
    for (const TokenId id : ids) {
      const Entry& e = entry(id);
      if (!(skip_special && e.special)) out += e.bytes;
    }
    return out;
  }

 private:
  struct Entry {
    std::string token;  // as in vocab.json (byte alphabet) or the special token's text
    std::string bytes;  // what it decodes to
    bool special = false;
  };
  struct Merge {
    std::int32_t rank;
    TokenId result;
  };
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<TokenId>> map;
  };
  static constexpr std::size_t kCacheMaxEntries = 1 << 16;
  static constexpr std::size_t kCacheMaxKeyBytes = 256;

  Gpt2Tokenizer() : m_cache(std::make_shared<Cache>()) {}

  static std::uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  const Entry& entry(TokenId id) const {
    const auto it = m_entries.find(id);
    PEMOE_CHECK_CONFIG(it != m_entries.end(), "Gpt2Tokenizer: id ", id, " is not in the vocabulary");
    return it->second;
  }

  void load_vocab(std::string_view text, const std::string& name) {
    const std::uint32_t(&b2u)[256] = detail::gpt2_byte_to_unicode();
    std::int16_t u2b[0x144];
    std::fill(std::begin(u2b), std::end(u2b), std::int16_t{-1});
    for (int b = 0; b < 256; ++b) u2b[b2u[b]] = static_cast<std::int16_t>(b);

    detail::VocabJsonParser parser(text, name);
    parser.parse([&](std::string key, std::int64_t value, std::size_t line) {
      const auto id = static_cast<TokenId>(value);
      if (key.empty()) throw detail::tokenizer_file_error(name, line, "empty token");
      if (m_token_to_id.count(key)) {
        throw detail::tokenizer_file_error(name, line, detail::concat("token '", key, "' appears twice"));
      }
      if (m_entries.count(id)) {
        throw detail::tokenizer_file_error(
            name, line,
            detail::concat("id ", id, " of '", key, "' is already the id of '", m_entries[id].token, "'"));
      }
      Entry e;
      e.token = key;
      for (std::size_t i = 0, len = 0; i < key.size(); i += len) {
        const std::uint32_t cp = detail::utf8_decode_one(key, i, len);  // key is valid UTF-8
        if (cp >= 0x144 || u2b[cp] < 0) {
          e.bytes = key;  // not a byte-alphabet token: decodes to its own text
          break;
        }
        e.bytes += static_cast<char>(static_cast<unsigned char>(u2b[cp]));
      }
      m_token_to_id.emplace(std::move(key), id);
      m_entries.emplace(id, std::move(e));
      m_max_id = std::max(m_max_id, id);
    });
    for (int b = 0; b < 256; ++b) {
      std::string s;
      detail::utf8_append(s, b2u[b]);
      const auto it = m_token_to_id.find(s);
      if (it == m_token_to_id.end()) {
        throw IoError(detail::concat(name, ": the vocabulary lacks the token '", s, "' of byte ", b,
                                     " (a GPT-2 vocabulary holds all 256 byte tokens)"));
      }
      m_byte_id[b] = it->second;
    }
  }

  void load_merges(std::string_view text, const std::string& name) {
    std::size_t line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t eol = text.find('\n', pos);
      if (eol == std::string_view::npos) eol = text.size();
      std::string_view line = text.substr(pos, eol - pos);
      pos = eol + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
      const std::size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
          line.find(' ', sp + 1) != std::string_view::npos) {
        throw detail::tokenizer_file_error(
            name, line_no,
            "a merge must be two tokens separated by one space, found '" + std::string(line) + "'");
      }
      const std::string a(line.substr(0, sp));
      const std::string b(line.substr(sp + 1));
      const auto ia = m_token_to_id.find(a);
      const auto ib = m_token_to_id.find(b);
      const auto ir = m_token_to_id.find(a + b);
      if (ia == m_token_to_id.end() || ib == m_token_to_id.end()) {
        throw detail::tokenizer_file_error(
            name, line_no,
            detail::concat("merge token '", ia == m_token_to_id.end() ? a : b, "' is not in the vocabulary"));
      }
      if (ir == m_token_to_id.end()) {
        throw detail::tokenizer_file_error(
            name, line_no, detail::concat("merge result '", a, b, "' is not in the vocabulary"));
      }
      const Merge m{static_cast<std::int32_t>(m_merges.size()), ir->second};
      if (!m_merges.emplace(pair_key(ia->second, ib->second), m).second) {
        throw detail::tokenizer_file_error(name, line_no,
                                           detail::concat("merge '", a, " ", b, "' appears twice"));
      }
    }
  }

  void add_specials(std::vector<std::string> specials) {
    for (auto& s : specials) {
      PEMOE_CHECK_CONFIG(!s.empty(), "Gpt2Tokenizer: a special token is empty");
      bool dup = false;
      for (const auto& p : m_special) dup = dup || p.first == s;
      PEMOE_CHECK_CONFIG(!dup, "Gpt2Tokenizer: special token '", s, "' given twice");
      TokenId id;
      const auto it = m_token_to_id.find(s);
      if (it != m_token_to_id.end()) {
        id = it->second;
      } else {
        PEMOE_CHECK_CONFIG(m_max_id < std::numeric_limits<TokenId>::max(), "Gpt2Tokenizer: no id left for '",
                           s, "'");
        id = ++m_max_id;
        m_token_to_id.emplace(s, id);
      }
      Entry& e = m_entries[id];
      e.token = s;
      e.bytes = s;
      e.special = true;
      m_special.emplace_back(std::move(s), id);
    }
  }

  void encode_segment(std::string_view text, std::vector<TokenId>& ids) const {
    if (text.empty()) return;
    std::vector<std::pair<std::size_t, std::size_t>> pieces;
    detail::gpt2_pretokenize(text, pieces);
    for (const auto& p : pieces) encode_piece(text.substr(p.first, p.second - p.first), ids);
  }

  void encode_piece(std::string_view piece, std::vector<TokenId>& ids) const {
    const bool cacheable = piece.size() <= kCacheMaxKeyBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(m_cache->mutex);
      const auto it = m_cache->map.find(std::string(piece));
      if (it != m_cache->map.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<TokenId> out = bpe(piece);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(m_cache->mutex);
      if (m_cache->map.size() >= kCacheMaxEntries) m_cache->map.clear();
      m_cache->map.emplace(std::string(piece), std::move(out));
    }
  }

  // The merge loop of HF tokenizers' `Word::merge_all`: a min-heap of (rank, position) over a linked list
  // of symbols; stale entries are skipped when the pair at that position no longer merges into the same id.
  std::vector<TokenId> bpe(std::string_view piece) const {
    struct Sym {
      TokenId id;
      std::ptrdiff_t prev, next;
      bool alive;
    };
    struct Cand {
      std::int32_t rank;
      std::size_t pos;
      TokenId result;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    const std::size_t n = piece.size();
    std::vector<Sym> sym(n);
    for (std::size_t i = 0; i < n; ++i) {
      sym[i] = {m_byte_id[static_cast<std::uint8_t>(piece[i])], static_cast<std::ptrdiff_t>(i) - 1,
                i + 1 < n ? static_cast<std::ptrdiff_t>(i + 1) : -1, true};
    }
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    const auto push = [&](std::size_t pos, TokenId a, TokenId b) {
      const auto it = m_merges.find(pair_key(a, b));
      if (it != m_merges.end()) heap.push({it->second.rank, pos, it->second.result});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(i, sym[i].id, sym[i + 1].id);
    while (!heap.empty()) {
      const Cand top = heap.top();
      heap.pop();
      Sym& cur = sym[top.pos];
      if (!cur.alive || cur.next < 0) continue;
      const auto next_pos = static_cast<std::size_t>(cur.next);
      const Sym right = sym[next_pos];
      const auto it = m_merges.find(pair_key(cur.id, right.id));
      if (it == m_merges.end() || it->second.result != top.result) continue;
      cur.id = top.result;
      cur.next = right.next;
      sym[next_pos].alive = false;
      if (right.next >= 0)
        sym[static_cast<std::size_t>(right.next)].prev = static_cast<std::ptrdiff_t>(top.pos);
      if (cur.prev >= 0)
        push(static_cast<std::size_t>(cur.prev), sym[static_cast<std::size_t>(cur.prev)].id, cur.id);
      if (cur.next >= 0) push(top.pos, cur.id, sym[static_cast<std::size_t>(cur.next)].id);
    }
    std::vector<TokenId> out;
    for (std::ptrdiff_t i = n ? 0 : -1; i >= 0; i = sym[static_cast<std::size_t>(i)].next) {
      out.push_back(sym[static_cast<std::size_t>(i)].id);
    }
    return out;
  }

  std::unordered_map<std::string, TokenId> m_token_to_id;
  std::unordered_map<TokenId, Entry> m_entries;
  std::unordered_map<std::uint64_t, Merge> m_merges;
  std::vector<std::pair<std::string, TokenId>> m_special;
  TokenId m_byte_id[256] = {};
  TokenId m_max_id = -1;
  std::shared_ptr<Cache> m_cache;
};

}  // namespace pemoe
