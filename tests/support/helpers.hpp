/// @file helpers.hpp
/// @brief Small helpers shared by the tests: random matrices, a max-abs-difference, reading a file.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::testing {

/// The bytes of the file `path`; `std::runtime_error` naming it when it cannot be opened.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open the test file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// An empty directory `<temp>/pemoe_<name>` (removed first if it exists); distinct names per test case, as
/// ctest runs test cases in parallel processes.
inline std::string scratch_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("pemoe_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

/// (rows, cols) matrix with N(0, stddev²) entries from `seed`.
template <class T = double>
Matrix<T> random_matrix(Index rows, Index cols, std::uint64_t seed, double stddev = 1.0) {
  Matrix<T> m(rows, cols);
  Rng rng(seed);
  rng.fill_normal(m.data(), m.size(), 0.0, stddev);
  return m;
}

/// Largest |a - b| over all entries (shapes must match).
template <class A, class B>
double max_abs_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return INFINITY;
  if (a.size() == 0) return 0.0;
  return static_cast<double>((a - b).cwiseAbs().maxCoeff());
}

/// Fills every parameter of `store` with N(0, stddev²) (so that zero-initialised B matrices do not hide
/// bugs).
template <class Store>
void randomize_params(Store& store, std::uint64_t seed, double stddev = 0.5) {
  Rng rng(seed);
  rng.fill_normal(store.values().data(), static_cast<Index>(store.values().size()), 0.0, stddev);
}

}  // namespace pemoe::testing
