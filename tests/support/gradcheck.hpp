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

#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::testing {

struct GradcheckOptions {
  double h = 1e-6;            ///< central-difference step
  double floor = 1e-3;        ///< denominator floor of the relative error
  Index max_entries = 400;    ///< per tensor; larger tensors are checked at an evenly spaced subset
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

/// Checks dx and every trainable parameter of `store` against central differences.
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

  store.zero_grad();
  forward(x, y);
  Matrix<double> dx = Matrix<double>::Zero(x.rows(), x.cols());
  backward(x, r, dx);
  const std::vector<double> analytic_grads = store.grads();

  GradcheckResult res;
  auto compare = [&](double a, double n, const std::string& name, Index i) {
    const double err = std::abs(a - n) / std::max({std::abs(a), std::abs(n), opt.floor});
    ++res.checked;
    if (err > res.worst || res.where.empty()) {
      res.worst = err;
      res.where = name + "[" + std::to_string(i) + "]";
      res.analytic = a;
      res.numeric = n;
    }
  };
  auto check_entries = [&](double* v, Index size, const double* analytic, const std::string& name) {
    const Index stride = std::max<Index>(1, (size + opt.max_entries - 1) / opt.max_entries);
    for (Index i = 0; i < size; i += stride) {
      const double saved = v[i];
      v[i] = saved + opt.h;
      const double lp = loss();
      v[i] = saved - opt.h;
      const double lm = loss();
      v[i] = saved;
      compare(analytic[i], (lp - lm) / (2 * opt.h), name, i);
    }
  };

  if (opt.check_input) check_entries(x.data(), x.size(), dx.data(), "x");
  for (const auto& e : store.entries()) {
    if (!e.trainable) continue;
    check_entries(store.values().data() + e.offset, e.size, analytic_grads.data() + e.grad_offset, e.name);
  }
  return res;
}

}  // namespace pemoe::testing
