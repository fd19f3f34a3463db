/// @file edit_distance.hpp
/// @brief Levenshtein distance, for the "did you mean ...?" of error messages (config keys, CLI options).
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace pemoe::detail {

/// The Levenshtein distance between `x` and `y` (insertions, deletions, substitutions of bytes). O(|x|·|y|).
inline std::size_t edit_distance(const std::string& x, const std::string& y) {
  std::vector<std::size_t> prev(y.size() + 1), cur(y.size() + 1);
  for (std::size_t j = 0; j <= y.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= x.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= y.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)});
    prev.swap(cur);
  }
  return prev[y.size()];
}

/// The candidate closest to `word` if its distance is below `max_distance`, else an empty string (first of
/// equally close candidates).
inline std::string closest_word(const std::string& word, const std::vector<std::string>& candidates,
                                std::size_t max_distance = 3) {
  std::string best;
  std::size_t best_d = max_distance;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

}  // namespace pemoe::detail
