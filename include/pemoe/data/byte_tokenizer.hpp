/// @file byte_tokenizer.hpp
/// @brief Byte-level tokenizer: ids 0..255 are the bytes, optional special tokens follow from 256.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe {

/// A token id (the row of the embedding table).
using TokenId = std::int32_t;

/// Byte-level tokenizer (ByT5 / llm.c "char" models without a vocabulary file).
///
/// Id `b` in 0..255 is the byte `b`; special tokens given at construction get the ids 256, 257, ... in
/// order (e.g. `ByteTokenizer({"<eos>"})` has `<eos>` = 256 and `vocab_size() == 257`).
///
/// `encode` maps every byte of the input to its id, whatever the input (invalid UTF-8, NUL bytes, text that
/// spells a special token): `decode(encode(s)) == s` for every byte string `s`. Special ids are only ever
/// produced by the caller (`special_id`), never by `encode`. Complexity: O(bytes).
class ByteTokenizer {
 public:
  /// Number of byte ids (the first special token's id).
  static constexpr TokenId kNumBytes = 256;

  /// A tokenizer whose special tokens are `special_tokens` (ids 256.. in order; names must be distinct and
  /// non-empty, else `ConfigError`).
  explicit ByteTokenizer(std::vector<std::string> special_tokens = {})
      : m_special(std::move(special_tokens)) {
    for (std::size_t i = 0; i < m_special.size(); ++i) {
      PEMOE_CHECK_CONFIG(!m_special[i].empty(), "ByteTokenizer: special token ", i, " is empty");
      for (std::size_t j = 0; j < i; ++j) {
        PEMOE_CHECK_CONFIG(m_special[i] != m_special[j], "ByteTokenizer: special token '", m_special[i],
                           "' given twice");
      }
    }
  }

  /// 256 plus the number of special tokens.
  std::size_t vocab_size() const { return kNumBytes + m_special.size(); }

  /// The special tokens, in id order (id of `special_tokens()[i]` is 256 + i).
  const std::vector<std::string>& special_tokens() const { return m_special; }

  /// The id of the special token `name` (`ConfigError` when there is none).
  TokenId special_id(std::string_view name) const {
    for (std::size_t i = 0; i < m_special.size(); ++i) {
      if (m_special[i] == name) return kNumBytes + static_cast<TokenId>(i);
    }
    throw ConfigError(detail::concat("ByteTokenizer: no special token '", name, "'"));
  }

  /// True when `id` is a special token's id.
  bool is_special(TokenId id) const { return id >= kNumBytes && static_cast<std::size_t>(id) < vocab_size(); }

  /// The ids of the bytes of `bytes` (one id per byte, all < 256).
  std::vector<TokenId> encode(std::string_view bytes) const {
    std::vector<TokenId> ids(bytes.size());
    for (std::size_t i = 0; i < bytes.size(); ++i) ids[i] = static_cast<std::uint8_t>(bytes[i]);
    return ids;
  }

  /// The bytes of `ids`; a special id decodes to its name, or to nothing when `skip_special`. An id outside
  /// `[0, vocab_size())` is a `ConfigError`.
  std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const {
    std::string out;
    out.reserve(ids.size());
    for (const TokenId id : ids) {
      PEMOE_CHECK_CONFIG(id >= 0 && static_cast<std::size_t>(id) < vocab_size(), "ByteTokenizer: id ", id,
                         " is outside the vocabulary [0, ", vocab_size(), ")");
      if (id < kNumBytes) {
        out += static_cast<char>(static_cast<unsigned char>(id));
      } else if (!skip_special) {
        out += m_special[static_cast<std::size_t>(id - kNumBytes)];
      }
    }
    return out;
  }

 private:
  std::vector<std::string> m_special;
};

}  // namespace pemoe
