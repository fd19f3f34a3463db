/// @file distribution.hpp
/// @brief Kolmogorov–Smirnov goodness of fit for the initialisation tests: the statistic of a sample against
/// an exact CDF and the critical value at a significance level (alpha = 1e-3 by default).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <vector>

namespace pemoe::testing {

/// D_n = sup_x |F_n(x) − F(x)| of the sample `x` against the continuous CDF `cdf`.
template <class Cdf>
double ks_statistic(std::vector<double> x, Cdf cdf) {
  std::sort(x.begin(), x.end());
  const double n = double(x.size());
  double d = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double f = cdf(x[i]);
    d = std::max(d, std::max(double(i + 1) / n - f, f - double(i) / n));
  }
  return d;
}

/// Critical value of D_n at significance `alpha` for a fully specified CDF: K_{1−α} / (√n + 0.12 + 0.11/√n)
/// (Stephens 1970), K_{1−α} = √(−ln(α/2)/2) (1.9495 at α = 1e-3). A sample of the right distribution exceeds
/// it with probability α.
inline double ks_critical(std::size_t n, double alpha = 1e-3) {
  const double sn = std::sqrt(double(n));
  return std::sqrt(-0.5 * std::log(alpha / 2)) / (sn + 0.12 + 0.11 / sn);
}

/// CDF of U[lo, hi).
inline std::function<double(double)> uniform_cdf(double lo, double hi) {
  return [lo, hi](double x) { return std::clamp((x - lo) / (hi - lo), 0.0, 1.0); };
}

/// CDF of N(mean, stddev²).
inline std::function<double(double)> normal_cdf(double mean, double stddev) {
  return [mean, stddev](double x) { return 0.5 * std::erfc(-(x - mean) / (stddev * std::sqrt(2.0))); };
}

/// The `n` values at `data` as doubles (a parameter, a matrix).
template <class T>
std::vector<double> sample_of(const T* data, std::ptrdiff_t n) {
  return std::vector<double>(data, data + n);
}

}  // namespace pemoe::testing
