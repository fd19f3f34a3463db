// `pemoe diff A B`: whether two safetensors files hold the same tensors and metadata, within a tolerance.
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../cli.hpp"
#include "../table.hpp"
#include "pemoe/io/safetensors.hpp"

namespace pemoe::cli {
namespace {

struct DiffOptions {
  std::string a, b;
  double rtol = 0, atol = 0;
  bool ignore_metadata = false, verbose = false, any_dtype = false;
};

int diff(const DiffOptions& o) {
  const auto a = SafetensorsFile::load(o.a);
  const auto b = SafetensorsFile::load(o.b);

  std::vector<std::string> problems;
  for (const auto& n : a.names())
    if (!b.contains(n)) problems.push_back("only in A: '" + n + "'");
  for (const auto& n : b.names())
    if (!a.contains(n)) problems.push_back("only in B: '" + n + "'");
  if (!o.ignore_metadata) {
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
    if (ta.shape != tb.shape || (ta.dtype != tb.dtype && !o.any_dtype)) {
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
    const bool ok = !nan_mismatch && std::isfinite(dn) && dn <= o.atol + o.rtol * an;
    if (rel > worst || worst_name.empty()) worst = rel, worst_name = n;
    if (!ok) ++differ;
    if (!ok || o.verbose)
      table.add({n, dtype_name(ta.dtype), shape_string(ta.shape), format("%.3e", max_abs),
                 format("%.3e", rel), ok ? "ok" : (nan_mismatch ? "NaN MISMATCH" : "DIFFERS")});
  }
  if (differ || o.verbose) {
    table.print(std::cout);
    std::cout << "\n";
  }
  for (const auto& p : problems) std::cout << p << "\n";
  std::cout << plural(compared, "tensor") << " compared, " << differ << " differ (rtol " << o.rtol
            << ", atol " << o.atol << "); largest relative error " << format("%.3e", worst)
            << (worst_name.empty() ? std::string() : " ('" + worst_name + "')") << "; " << problems.size()
            << " name/metadata differences\n";
  return differ == 0 && problems.empty() ? 0 : 1;
}

void setup_diff(CLI::App& cmd) {
  auto o = std::make_shared<DiffOptions>();
  const double inf = std::numeric_limits<double>::infinity();
  cmd.add_option("A", o->a, "the reference .safetensors file")->required()->type_name("A");
  cmd.add_option("B", o->b, "the .safetensors file compared with it")->required()->type_name("B");
  cmd.add_option("--rtol", o->rtol, "relative tolerance (default 0: exact)")
      ->type_name("R")
      ->check(number_in(0, inf, "[0, inf)"));
  cmd.add_option("--atol", o->atol, "absolute tolerance (default 0)")
      ->type_name("X")
      ->check(number_in(0, inf, "[0, inf)"));
  cmd.add_flag("--ignore-metadata", o->ignore_metadata, "do not compare __metadata__")
      ->disable_flag_override();
  cmd.add_flag("--verbose", o->verbose, "print every tensor, not only the ones that differ")
      ->disable_flag_override();
  cmd.add_flag("--any-dtype", o->any_dtype,
               "compare the values of tensors stored in different dtypes (e.g. an f64 run with an f32 "
               "reference), both read as double")
      ->disable_flag_override();
  cmd.footer(
      "Compares two safetensors files: the same tensor names, dtypes and shapes, values within tolerance,\n"
      "and the same __metadata__. A is the reference: a tensor a (from A) matches b (from B) when\n"
      "  ||a - b||_F <= atol + rtol * ||a||_F      (values compared as double)\n"
      "and the relative error printed is ||a - b||_F / ||a||_F.\n"
      "Prints the tensors that differ (all of them with --verbose) and a summary. Exit code 0 when the "
      "files\n"
      "match, 1 when they differ, 2 for a usage error.");
  set_action(cmd, [o] { return diff(*o); });
}

[[maybe_unused]] const bool registered_diff =
    register_command({"diff", "compare the tensors and metadata of two safetensors files", setup_diff});

}  // namespace
}  // namespace pemoe::cli
