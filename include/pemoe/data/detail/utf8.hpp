/// @file utf8.hpp
/// @brief UTF-8 decoding (strict and lenient) and the Unicode classes GPT-2's pre-tokenizer needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pemoe/data/detail/unicode_ranges.hpp"

namespace pemoe::detail {

/// Marker code point for a byte that does not start a valid UTF-8 sequence.
inline constexpr std::uint32_t kInvalidCodePoint = 0xFFFFFFFFu;

/// Decodes one UTF-8 sequence at `s[i]`: returns the code point and sets `len` (1..4). An invalid sequence
/// (bad lead byte, missing continuation, overlong form, surrogate, above U+10FFFF) decodes as
/// `kInvalidCodePoint` with `len == 1`, so a lenient decoder advances one byte at a time. Never reads past
/// `s.size()`.
inline std::uint32_t utf8_decode_one(std::string_view s, std::size_t i, std::size_t& len) {
  const auto byte = [&](std::size_t k) { return static_cast<std::uint8_t>(s[k]); };
  len = 1;
  const std::uint8_t b0 = byte(i);
  if (b0 < 0x80) return b0;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  std::uint32_t min = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, cp = b0 & 0x1Fu, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, cp = b0 & 0x0Fu, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, cp = b0 & 0x07u, min = 0x10000;
  } else {
    return kInvalidCodePoint;
  }
  if (i + n > s.size()) return kInvalidCodePoint;
  for (std::size_t k = 1; k < n; ++k) {
    const std::uint8_t b = byte(i + k);
    if ((b & 0xC0u) != 0x80u) return kInvalidCodePoint;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidCodePoint;
  len = n;
  return cp;
}

/// True when `s` is entirely valid UTF-8.
inline bool utf8_valid(std::string_view s) {
  for (std::size_t i = 0, len = 0; i < s.size(); i += len) {
    if (utf8_decode_one(s, i, len) == kInvalidCodePoint) return false;
  }
  return true;
}

/// Appends the UTF-8 encoding of code point `cp` (<= U+10FFFF) to `out`.
inline void utf8_append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// True when `cp` lies in one of the sorted closed ranges `table[0..n)`.
template <std::size_t N>
bool in_ranges(const std::uint32_t (&table)[N][2], std::uint32_t cp) {
  std::size_t lo = 0, hi = N;
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (table[mid][1] < cp) {
      lo = mid + 1;
    } else if (table[mid][0] > cp) {
      hi = mid;
    } else {
      return true;
    }
  }
  return false;
}

/// `\p{L}`: general category L* (as HF tokenizers classifies it, `kUnicodeTablesSource`).
inline bool is_letter(std::uint32_t cp) {
  return cp != kInvalidCodePoint && in_ranges(kLetterRanges, cp);
}

/// `\p{N}`: general category N* (Nd, Nl, No).
inline bool is_number(std::uint32_t cp) {
  return cp != kInvalidCodePoint && in_ranges(kNumberRanges, cp);
}

/// `\s` as Oniguruma (the regex engine of Hugging Face `tokenizers`) defines it: the Unicode White_Space
/// property (U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F,
/// U+205F, U+3000). Note U+001C..U+001F are not White_Space (Python's `str.isspace` says otherwise).
inline bool is_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

}  // namespace pemoe::detail
