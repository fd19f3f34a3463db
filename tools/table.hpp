// A plain-text table for the `pemoe` tool: columns sized to their widest cell, text left-aligned and
// numbers right-aligned, a rule under the header and above a totals row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

namespace pemoe::cli {

/// "1,234,567".
inline std::string thousands(long long v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (v < 0 ? "-" : "") + out;
}

/// "1 tensor", "3 tensors".
inline std::string plural(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

/// printf-style formatting of one number ("%.2e", "%.1f%%").
inline std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

/// Rows of cells printed as aligned columns.
class Table {
 public:
  /// `right[c]` right-aligns column c (numbers).
  Table(std::vector<std::string> header, std::vector<bool> right)
      : m_header(std::move(header)), m_right(std::move(right)) {}
  void add(std::vector<std::string> row) { m_rows.push_back(std::move(row)); }
  /// The totals row, printed below a rule.
  void total(std::vector<std::string> row) { m_total = std::move(row); }

  void print(std::ostream& os) const {
    std::vector<std::size_t> w(m_header.size(), 0);
    auto widen = [&](const std::vector<std::string>& r) {
      for (std::size_t c = 0; c < r.size() && c < w.size(); ++c) w[c] = std::max(w[c], r[c].size());
    };
    widen(m_header);
    for (const auto& r : m_rows) widen(r);
    widen(m_total);
    std::size_t line = 0;
    for (std::size_t c = 0; c < w.size(); ++c) line += w[c] + (c ? 2 : 0);
    auto put = [&](const std::vector<std::string>& r) {
      std::string s;
      for (std::size_t c = 0; c < w.size(); ++c) {
        const std::string cell = c < r.size() ? r[c] : "";
        const std::string pad(w[c] - cell.size(), ' ');
        s += (c ? "  " : "") + (m_right[c] ? pad + cell : cell + (c + 1 < w.size() ? pad : ""));
      }
      while (!s.empty() && s.back() == ' ') s.pop_back();
      os << s << '\n';
    };
    put(m_header);
    os << std::string(line, '-') << '\n';
    for (const auto& r : m_rows) put(r);
    if (!m_total.empty()) {
      os << std::string(line, '-') << '\n';
      put(m_total);
    }
  }

 private:
  std::vector<std::string> m_header;
  std::vector<bool> m_right;
  std::vector<std::vector<std::string>> m_rows;
  std::vector<std::string> m_total;
};

}  // namespace pemoe::cli
