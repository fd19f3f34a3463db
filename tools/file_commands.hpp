// `pemoe info FILE` (what a safetensors file holds) and `pemoe diff A B` (whether two files hold the
// same tensors and metadata, within a tolerance).
#pragma once

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "pemoe/io/safetensors.hpp"
#include "table.hpp"

namespace pemoe::cli {

inline const char* const info_help =
    R"(usage: pemoe info FILE.safetensors

Lists the tensors of a safetensors file (name, dtype, shape, elements) in file order, then its
__metadata__. The file is fully validated first, so this also checks that it is well-formed.
)";

inline const char* const diff_help =
    R"(usage: pemoe diff A.safetensors B.safetensors [--rtol R] [--atol X] [--ignore-metadata] [--verbose]

Compares two safetensors files: the same tensor names, dtypes and shapes, values within tolerance,
and the same __metadata__. A is the reference: a tensor a (from A) matches b (from B) when
  ||a - b||_F <= atol + rtol * ||a||_F      (values compared as double)
and the relative error printed is ||a - b||_F / ||a||_F.
Prints the tensors that differ (all of them with --verbose) and a summary. Exit code 0 when the files
match, 1 when they differ, 2 for a usage error.

options:
  --rtol R             relative tolerance (default 0: exact)
  --atol X             absolute tolerance (default 0)
  --ignore-metadata    do not compare __metadata__
  --verbose            print every tensor, not only the ones that differ
  -h, --help           this text
)";

/// `pemoe info`; returns the exit code.
inline int info_command(int argc, char** argv, int first) {
  const Args args("pemoe info", {}, argc, argv, first);
  if (args.help()) {
    std::cout << info_help;
    return 0;
  }
  args.expect_positional(1, "file (usage: pemoe info FILE)");
  const auto f = SafetensorsFile::load(args.positional()[0]);
  Table table({"tensor", "dtype", "shape", "elements"}, {false, false, false, true});
  long long total = 0;
  for (const auto& name : f.names()) {
    const auto& ti = f.info(name);
    table.add({name, dtype_name(ti.dtype), shape_string(ti.shape), thousands(ti.numel())});
    total += ti.numel();
  }
  table.total({"total (" + plural(f.size(), "tensor") + ")", "", "", thousands(total)});
  std::cout << "'" << f.source() << "': " << thousands(static_cast<long long>(f.file_size()))
            << " bytes, header " << thousands(static_cast<long long>(f.header_size())) << " bytes\n\n";
  table.print(std::cout);
  if (!f.metadata().empty()) {
    std::cout << "\n__metadata__:\n";
    for (const auto& [k, v] : f.metadata()) std::cout << "  " << k << ": " << v << "\n";
  }
  return 0;
}

/// `pemoe diff`; returns 0 when the files match, 1 when they differ.
inline int diff_command(int argc, char** argv, int first) {
  const Args args("pemoe diff",
                  {{"--rtol", true}, {"--atol", true}, {"--ignore-metadata", false}, {"--verbose", false}},
                  argc, argv, first);
  if (args.help()) {
    std::cout << diff_help;
    return 0;
  }
  args.expect_positional(2, "files (usage: pemoe diff A B [--rtol R])");
  const double rtol = args.number("--rtol", 0.0, 0.0, HUGE_VAL);
  const double atol = args.number("--atol", 0.0, 0.0, HUGE_VAL);
  const bool verbose = args.has("--verbose");
  const auto a = SafetensorsFile::load(args.positional()[0]);
  const auto b = SafetensorsFile::load(args.positional()[1]);

  std::vector<std::string> problems;
  for (const auto& n : a.names())
    if (!b.contains(n)) problems.push_back("only in A: '" + n + "'");
  for (const auto& n : b.names())
    if (!a.contains(n)) problems.push_back("only in B: '" + n + "'");
  if (!args.has("--ignore-metadata")) {
    for (const auto& [k, v] : a.metadata()) {
      auto it = b.metadata().find(k);
      if (it == b.metadata().end())
        problems.push_back("metadata only in A: '" + k + "'");
      else if (it->second != v)
        problems.push_back("metadata '" + k + "' differs: '" + v + "' vs '" + it->second + "'");
    }
    for (const auto& [k, v] : b.metadata())
      if (!a.metadata().count(k)) problems.push_back("metadata only in B: '" + k + "'");
  }

  Table table({"tensor", "dtype", "shape", "max |a-b|", "rel. error", ""},
              {false, false, false, true, true, false});
  std::size_t compared = 0, differ = 0;
  double worst = 0;
  std::string worst_name;
  for (const auto& n : a.names()) {
    if (!b.contains(n)) continue;
    const auto& ta = a.info(n);
    const auto& tb = b.info(n);
    ++compared;
    if (ta.shape != tb.shape || ta.dtype != tb.dtype) {
      ++differ;
      table.add({n, std::string(dtype_name(ta.dtype)) + "/" + dtype_name(tb.dtype),
                 shape_string(ta.shape) + "/" + shape_string(tb.shape), "", "", "DIFFERENT TYPE"});
      continue;
    }
    const auto va = a.to_vector<double>(n);
    const auto vb = b.to_vector<double>(n);
    double max_abs = 0, d2 = 0, a2 = 0;
    bool nan_mismatch = false;
    for (std::size_t i = 0; i < va.size(); ++i) {
      if (std::isnan(va[i]) || std::isnan(vb[i])) {
        nan_mismatch |= std::isnan(va[i]) != std::isnan(vb[i]);
        continue;
      }
      const double d = va[i] == vb[i] ? 0.0 : va[i] - vb[i];  // inf == inf counts as equal
      max_abs = std::max(max_abs, std::abs(d));
      d2 += d * d;
      a2 += va[i] * va[i];
    }
    const double dn = std::sqrt(d2), an = std::sqrt(a2);
    const double rel = an > 0 ? dn / an : dn;
    const bool ok = !nan_mismatch && std::isfinite(dn) && dn <= atol + rtol * an;
    if (rel > worst || worst_name.empty()) worst = rel, worst_name = n;
    if (!ok) ++differ;
    if (!ok || verbose)
      table.add({n, dtype_name(ta.dtype), shape_string(ta.shape), format("%.3e", max_abs),
                 format("%.3e", rel), ok ? "ok" : (nan_mismatch ? "NaN MISMATCH" : "DIFFERS")});
  }
  if (differ || verbose) {
    table.print(std::cout);
    std::cout << "\n";
  }
  for (const auto& p : problems) std::cout << p << "\n";
  std::cout << plural(compared, "tensor") << " compared, " << differ << " differ (rtol " << rtol << ", atol "
            << atol << "); largest relative error " << format("%.3e", worst)
            << (worst_name.empty() ? std::string() : " ('" + worst_name + "')") << "; " << problems.size()
            << " name/metadata differences\n";
  return differ == 0 && problems.empty() ? 0 : 1;
}

}  // namespace pemoe::cli
