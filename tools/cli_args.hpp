// Argument parsing of the `pemoe` command-line tool: GNU-style `--flag value`, `--flag=value` and
// boolean `--flag`, positional arguments, `-h/--help`. Each subcommand declares its flags; anything
// else is a `UsageError` (exit code 2). No dependency beyond the standard library.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace pemoe::cli {

/// A mistake in the command line (exit code 2).
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

/// A problem found while running a valid command (exit code 1) that is not a library exception.
class RuntimeError : public std::runtime_error {
 public:
  explicit RuntimeError(const std::string& what) : std::runtime_error(what) {}
};

/// One flag a subcommand accepts.
struct Flag {
  std::string name;          ///< with the dashes: "--max-bond"
  bool takes_value = false;  ///< "--max-bond 64" (true) or "--pad" (false)
};

/// The parsed command line of one subcommand.
class Args {
 public:
  /// Parses `argv[first..argc)` against `flags`. `-h`/`--help` set `help()` and stop the checks.
  Args(const std::string& command, const std::vector<Flag>& flags, int argc, char** argv, int first)
      : m_command(command) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        m_help = true;
        return;
      }
      if (a == "--") {
        for (++i; i < argc; ++i) m_positional.push_back(argv[i]);
        break;
      }
      if (a.size() < 2 || a[0] != '-') {
        m_positional.push_back(a);
        continue;
      }
      std::optional<std::string> inline_value;
      if (const auto eq = a.find('='); eq != std::string::npos) {
        inline_value = a.substr(eq + 1);
        a = a.substr(0, eq);
      }
      const Flag* flag = nullptr;
      for (const auto& f : flags)
        if (f.name == a) flag = &f;
      if (!flag) throw UsageError("unknown option '" + a + "'" + suggestion(a, flags));
      if (m_values.count(a)) throw UsageError("option '" + a + "' is given twice");
      if (!flag->takes_value) {
        if (inline_value) throw UsageError("option '" + a + "' takes no value");
        m_values[a] = "";
      } else if (inline_value) {
        m_values[a] = *inline_value;
      } else {
        if (i + 1 >= argc) throw UsageError("option '" + a + "' needs a value");
        m_values[a] = argv[++i];
      }
    }
  }

  /// Whether -h/--help was given.
  bool help() const { return m_help; }
  /// Whether the flag was given.
  bool has(const std::string& flag) const { return m_values.count(flag) != 0; }
  /// The flag's value, or `fallback` when it was not given.
  std::string get(const std::string& flag, const std::string& fallback = "") const {
    auto it = m_values.find(flag);
    return it == m_values.end() ? fallback : it->second;
  }
  /// The flag's value; a `UsageError` when it was not given.
  std::string required(const std::string& flag) const {
    if (!has(flag)) throw UsageError("missing required option '" + flag + "'");
    return get(flag);
  }
  /// The flag's value as an integer in [lo, hi], or `fallback` when absent.
  long long integer(const std::string& flag, long long fallback, long long lo, long long hi) const {
    if (!has(flag)) return fallback;
    const std::string v = get(flag);
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno == ERANGE || x < lo || x > hi)
      throw UsageError("option '" + flag + "' needs an integer in [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "], got '" + v + "'");
    return x;
  }
  /// The flag's value as a number in [lo, hi), or `fallback` when absent.
  double number(const std::string& flag, double fallback, double lo, double hi) const {
    if (!has(flag)) return fallback;
    const std::string v = get(flag);
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(x >= lo && x < hi))
      throw UsageError("option '" + flag + "' needs a number in [" + trim(lo) + ", " + trim(hi) + "), got '" +
                       v + "'");
    return x;
  }
  /// Positional arguments in order.
  const std::vector<std::string>& positional() const { return m_positional; }
  /// Exactly `n` positional arguments named `what` (for the message), else a `UsageError`.
  void expect_positional(std::size_t n, const std::string& what) const {
    if (m_positional.size() < n) throw UsageError("missing " + what);
    if (m_positional.size() > n) throw UsageError("unexpected argument '" + m_positional[n] + "'");
  }

 private:
  static std::string trim(double x) {
    std::string s = std::to_string(x);
    while (s.size() > 1 && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }
  // " (did you mean '--max-bond'?)" when one known flag differs by a prefix or a small edit.
  static std::string suggestion(const std::string& a, const std::vector<Flag>& flags) {
    auto dist = [](const std::string& x, const std::string& y) {
      std::vector<std::size_t> prev(y.size() + 1), cur(y.size() + 1);
      for (std::size_t j = 0; j <= y.size(); ++j) prev[j] = j;
      for (std::size_t i = 1; i <= x.size(); ++i) {
        cur[0] = i;
        for (std::size_t j = 1; j <= y.size(); ++j)
          cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)});
        prev.swap(cur);
      }
      return prev[y.size()];
    };
    std::string best;
    std::size_t best_d = 3;
    for (const auto& f : flags) {
      const std::size_t d = dist(a, f.name);
      if (d < best_d) best_d = d, best = f.name;
    }
    std::string known;
    for (const auto& f : flags) known += (known.empty() ? "" : ", ") + f.name;
    return best.empty() ? " (known options: " + known + ", --help)" : " (did you mean '" + best + "'?)";
  }

  std::string m_command;
  bool m_help = false;
  std::map<std::string, std::string> m_values;
  std::vector<std::string> m_positional;
};

}  // namespace pemoe::cli
