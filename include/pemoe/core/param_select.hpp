/// @file param_select.hpp
/// @brief Selecting a `ParamStore`'s parameters by a regular expression over their dotted names (as the MoV
/// and PEFT code do): `set_trainable(store, regex, flag)`, `match_params(store, regex)`.
///
/// Kept apart from core/param_store.hpp so that `<regex>` (slow to compile) is included only where a
/// selection by pattern is made, not by every layer header.
#pragma once

#include <cstddef>
#include <regex>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"

namespace pemoe {

/// `pattern` compiled as an ECMAScript regex; throws `ConfigError` "<site>: '<pattern>' is not a valid
/// regex: <reason>".
inline std::regex compile_param_regex(const std::string& pattern, const std::string& site) {
  try {
    return std::regex(pattern);
  } catch (const std::regex_error& err) {
    throw ConfigError(site + ": '" + pattern + "' is not a valid regex: " + err.what());
  }
}

/// For every parameter of `store` (declaration order), whether its full name matches `re`
/// (`std::regex_search`). Cost: one regex search per parameter.
template <class T>
std::vector<bool> match_params(const ParamStore<T>& store, const std::regex& re) {
  std::vector<bool> match(store.size());
  for (std::size_t i = 0; i < store.size(); ++i) match[i] = std::regex_search(store.entries()[i].name, re);
  return match;
}

/**
 * @brief Sets the trainable flag of every parameter whose full name matches `regex` (`std::regex_search`,
 * ECMAScript) and re-lays the gradient arena (`ParamStore::set_trainable_if`).
 *
 * Returns how many parameters matched. A pattern that matches nothing throws `ConfigError` (it is almost
 * always a typo) and changes nothing; so does an invalid pattern.
 * @code
 *   set_trainable(store, "lora_|router", true);   // PEFT-style: train the adapters and routers only
 * @endcode
 */
template <class T>
std::size_t set_trainable(ParamStore<T>& store, const std::string& regex, bool trainable) {
  const std::regex re = compile_param_regex(regex, "ParamStore::set_trainable");
  const std::vector<bool> match = match_params(store, re);
  std::size_t matched = 0;
  for (bool m : match) matched += m;
  PEMOE_CHECK_CONFIG(matched > 0, "ParamStore::set_trainable: pattern '", regex, "' matches none of the ",
                     store.size(), " parameters");
  std::size_t i = 0;  // set_trainable_if calls the predicate once per parameter, in declaration order
  return store.set_trainable_if([&](const auto&) { return match[i++]; }, trainable);
}

}  // namespace pemoe
