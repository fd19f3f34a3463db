/// @file target_modules.hpp
/// @brief Which linear sites of a model get an adapter: PEFT's `target_modules`, `exclude_modules`,
/// `layers_to_transform` and `layers_pattern`, matched exactly as PEFT's `check_target_module_exists` does.
#pragma once

#include <regex>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe {

/**
 * @brief A selection of modules by name, with PEFT's semantics (`peft.tuners.tuners_utils`):
 * - `names` (a list): a module key matches when it equals a name, or ends with "." + name; only the
 *   suffix matches are then filtered by `layers_to_transform` (an exact name is always taken, as in PEFT);
 * - `regex` (PEFT's string form): the key must match it entirely (`re.fullmatch`); `layers_to_transform` does
 *   not apply;
 * - `all_linear`: every linear site except the output head;
 * - `exclude`: keys equal to, or ending with "." + an entry, are never taken;
 * - `layers_to_transform`: the layer index is the first number that follows a dotted segment
 *   (`.*?\.[^.]*\.(\d+)\.`), or the number after one of `layers_pattern` ("h", "block", ...) when given.
 * Keys are module names without the parameter suffix: `transformer.h.0.attn.c_attn`.
 */
struct TargetModules {
  std::vector<std::string> names;           ///< exact names or suffixes ("c_attn", "mlp.c_proj")
  std::string regex;                        ///< non-empty: a full-match regular expression instead of names
  bool all_linear = false;                  ///< PEFT "all-linear"
  std::vector<std::string> exclude;         ///< `exclude_modules` (list form)
  std::vector<long> layers_to_transform;    ///< empty: every layer
  std::vector<std::string> layers_pattern;  ///< e.g. {"h"} for GPT-2, {"block"} for T5; empty: any

  /// Whether the module `key` is selected; `is_output_head` marks the LM head (never taken by all-linear).
  bool matches(const std::string& key, bool is_output_head = false) const {
    for (const auto& e : exclude)
      if (key == e || ends_with(key, "." + e)) return false;
    if (all_linear) return !is_output_head && layer_ok(key);
    if (!regex.empty()) {
      try {
        return std::regex_match(key, std::regex(regex));
      } catch (const std::regex_error& err) {
        throw ConfigError("target_modules: '" + regex + "' is not a valid regular expression: " + err.what());
      }
    }
    for (const auto& n : names)
      if (key == n) return true;
    for (const auto& n : names)
      if (ends_with(key, "." + n)) return layer_ok(key);
    return false;
  }

  /// The layer index of a key as PEFT finds it, or -1.
  long layer_index(const std::string& key) const {
    std::smatch m;
    if (layers_pattern.empty()) {
      static const std::regex any(R"(.*?\.[^.]*\.(\d+)\..*)");
      if (std::regex_match(key, m, any)) return std::stol(m[1].str());
      return -1;
    }
    for (const auto& p : layers_pattern) {
      const std::regex re("(?:^|.*?\\.)" + p + "\\.(\\d+)\\..*");
      if (std::regex_match(key, m, re)) return std::stol(m[1].str());
    }
    return -1;
  }

 private:
  static bool ends_with(const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  }
  bool layer_ok(const std::string& key) const {
    if (layers_to_transform.empty()) return true;
    const long i = layer_index(key);
    if (i < 0) return false;
    for (long l : layers_to_transform)
      if (l == i) return true;
    return false;
  }
};

}  // namespace pemoe
