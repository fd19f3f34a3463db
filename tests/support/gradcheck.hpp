/// @file gradcheck.hpp
/// @brief Central-difference gradient checker for pemoe layers (tests only).
///
/// The scalar checked is L(x, θ) = Σ R ⊙ y(x, θ) + aux(x, θ) for a fixed random R, so dL/dy = R.
/// The analytic gradient comes from one forward + backward with dy = R; the numerical one is
/// (L(v + h) − L(v − h)) / 2h for every checked entry v of x and of each trainable parameter.
/// The error of an entry is |analytic − numeric| / max(|analytic|, |numeric|, floor): relative, with
/// a floor so that gradients near zero are compared absolutely.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::testing {

struct GradcheckOptions {
  double h = 1e-6;            ///< central-difference step
  double floor = 1e-3;        ///< denominator floor of the relative error
  Index max_entries = 400;    ///< per tensor; larger tensors are checked at a seeded random subset
  std::uint64_t seed = 1234;  ///< seed of R
  bool check_input = true;    ///< also check dx
};

struct GradcheckResult {
  double worst = 0.0;                    ///< worst relative error over all checked entries
  std::string where;                     ///< "x[3]" or "<param name>[17]": where the worst error is
  double analytic = 0.0, numeric = 0.0;  ///< the two values at the worst entry
  Index checked = 0;                     ///< number of entries compared

  bool ok(double tol) const { return worst <= tol; }
  std::string report() const {
    std::ostringstream os;
    os << "worst relative error " << worst << " at " << where << " (analytic " << analytic << ", numeric "
       << numeric << ") over " << checked << " entries";
    return os.str();
  }
};

/// Forward: fills y (resizing it) from x and returns any auxiliary loss added to Σ R⊙y (0 if none).
using GradcheckForward = std::function<double(const Matrix<double>& x, Matrix<double>& y)>;
/// Backward: called right after a forward on the same x; accumulates parameter gradients, writes dx.
using GradcheckBackward =
    std::function<void(const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx)>;

/// Checks dx and every trainable parameter of `store` against central differences, and the layer contract:
/// before backward every gradient is filled with random values G0 and dx with NaN; the analytic gradient is
/// grads − G0 (so a backward that overwrites instead of adding fails), dx must hold no NaN afterwards (so a
/// backward that adds into dx, or leaves part of it unwritten, fails); a second backward must give
/// G0 + 2·gradient and the same dx (entries reported as "twice:<name>[i]").
inline GradcheckResult gradcheck(ParamStore<double>& store, Matrix<double> x, const GradcheckForward& forward,
                                 const GradcheckBackward& backward, const GradcheckOptions& opt = {}) {
  Matrix<double> y;
  forward(x, y);
  Matrix<double> r(y.rows(), y.cols());
  Rng rng(opt.seed);
  rng.fill_normal(r.data(), r.size(), 0.0, 1.0);
  auto loss = [&]() {
    Matrix<double> yy;
    const double aux = forward(x, yy);
    return (yy.array() * r.array()).sum() + aux;
  };

  auto& grads = store.grads();
  using Arena = std::remove_reference_t<decltype(grads)>;
  Arena g0(grads.size());
  rng.split(7).fill_normal(g0.data(), static_cast<Index>(g0.size()), 0.0, 1.0);
  grads = g0;
  forward(x, y);
  Matrix<double> dx = Matrix<double>::Constant(x.rows(), x.cols(), std::nan(""));
  backward(x, r, dx);
  std::vector<double> analytic_grads(grads.size());
  for (std::size_t i = 0; i < grads.size(); ++i) analytic_grads[i] = grads[i] - g0[i];
  const Matrix<double> dx_first = dx;

  GradcheckResult res;
  auto compare = [&](double a, double n, const std::string& name, Index i) {
    double err = std::abs(a - n) / std::max({std::abs(a), std::abs(n), opt.floor});
    if (std::isnan(err)) err = INFINITY;  // a NaN left in dx (or produced) fails
    ++res.checked;
    if (err > res.worst || res.where.empty()) {
      res.worst = err;
      res.where = name + "[" + std::to_string(i) + "]";
      res.analytic = a;
      res.numeric = n;
    }
  };

  // The second backward: gradients add up, dx is written again (not added).
  backward(x, r, dx);
  for (std::size_t i = 0; i < grads.size(); ++i)
    compare(grads[i] - g0[i], 2.0 * analytic_grads[i], "twice:grads", static_cast<Index>(i));
  if (opt.check_input)
    for (Index i = 0; i < dx.size(); ++i) compare(dx.data()[i], dx_first.data()[i], "twice:x", i);

  // Entries checked: all of a small tensor, a seeded random subset (without replacement) of a large one.
  Rng pick = rng.split(11);
  auto check_entries = [&](double* v, Index size, const double* analytic, const std::string& name) {
    std::vector<Index> idx(static_cast<std::size_t>(size));
    for (Index i = 0; i < size; ++i) idx[static_cast<std::size_t>(i)] = i;
    const Index count = std::min(size, opt.max_entries);
    for (Index i = 0; i < count; ++i)  // partial Fisher-Yates
      std::swap(idx[static_cast<std::size_t>(i)],
                idx[static_cast<std::size_t>(i + static_cast<Index>(pick.below(std::uint64_t(size - i))))]);
    for (Index q = 0; q < count; ++q) {
      const Index i = idx[static_cast<std::size_t>(q)];
      const double saved = v[i];
      v[i] = saved + opt.h;
      const double lp = loss();
      v[i] = saved - opt.h;
      const double lm = loss();
      v[i] = saved;
      compare(analytic[i], (lp - lm) / (2 * opt.h), name, i);
    }
  };

  if (opt.check_input) check_entries(x.data(), x.size(), dx_first.data(), "x");
  for (const auto& e : store.entries()) {
    if (!e.trainable) continue;
    check_entries(store.values().data() + e.offset, e.size, analytic_grads.data() + e.grad_offset, e.name);
  }
  return res;
}

}  // namespace pemoe::testing
