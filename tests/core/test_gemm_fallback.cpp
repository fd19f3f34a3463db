// core/gemm.hpp, the Eigen fallback (every extent above detail::kSkinnyMax): all four transpose combinations,
// strided views of A, B and C, alpha and beta 0 / 1 / other (C full of NaN at beta 0), float and double,
// against a naive long-double loop that reads the operands element by element.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "pemoe/core/detail/skinny_gemm.hpp"
#include "pemoe/core/gemm.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

struct Shape3 {
  Index m, n, k;
};

const char* op_name(Op o) {
  return o == Op::N ? "N" : "T";
}

// For a (m, k)·(k, n) product with operands stored as `oa`, `ob` say, every operand is a view into a larger
// matrix (offset rows and columns, so its outer stride exceeds its width), and so is C.
template <class T>
void check_fallback(Op oa, Op ob, const Shape3& s, T alpha, T beta) {
  const Index m = s.m, n = s.n, k = s.k;
  REQUIRE(std::min({m, n, k}) > detail::kSkinnyMax);  // no skinny kernel takes this product
  const Index ar = oa == Op::N ? m : k, ac = oa == Op::N ? k : m;
  const Index br = ob == Op::N ? k : n, bc = ob == Op::N ? n : k;
  const Matrix<T> Aw = testing::random_matrix<T>(ar + 3, ac + 5, 11);
  const Matrix<T> Bw = testing::random_matrix<T>(br + 2, bc + 4, 12);
  const Matrix<T> C0w = testing::random_matrix<T>(m + 4, n + 6, 13);
  Matrix<T> Cw = C0w;
  const auto A = Aw.block(2, 3, ar, ac);
  const auto B = Bw.block(1, 2, br, bc);
  auto C = Cw.block(3, 1, m, n);
  REQUIRE(A.outerStride() > A.cols());
  REQUIRE(C.outerStride() > C.cols());
  if (beta == T(0)) C.setConstant(std::numeric_limits<T>::quiet_NaN());  // beta = 0 must not read C
  gemm<T>(oa, ob, alpha, A, B, beta, C);

  INFO("op(A) " << op_name(oa) << " op(B) " << op_name(ob) << " (m, n, k) = (" << m << ", " << n << ", " << k
                << ") alpha " << alpha << " beta " << beta);
  const auto C0 = C0w.block(3, 1, m, n);
  const long double eps = std::numeric_limits<T>::epsilon();
  double worst = 0;  // largest |error| / bound
  Index non_finite = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      long double acc = 0, mag = 0;
      for (Index l = 0; l < k; ++l) {
        const long double a = oa == Op::N ? A(i, l) : A(l, i);
        const long double b = ob == Op::N ? B(l, j) : B(j, l);
        acc += a * b;
        mag += std::fabs(a * b);
      }
      long double want = static_cast<long double>(alpha) * acc;
      long double scale = std::fabs(static_cast<long double>(alpha)) * mag;
      if (beta != T(0)) {
        want += static_cast<long double>(beta) * C0(i, j);
        scale += std::fabs(static_cast<long double>(beta) * C0(i, j));
      }
      const long double got = C(i, j);
      non_finite += !std::isfinite(static_cast<double>(got));
      // a dot product of length k in precision eps errs by at most ≈ k·eps·Σ|a·b|; allow 2× that, plus the
      // alpha and beta roundings
      const long double bound = (2 * k + 4) * eps * scale + std::numeric_limits<T>::min();
      worst = std::max(worst, static_cast<double>(std::fabs(got - want) / bound));
    }
  CHECK(non_finite == 0);
  CHECK(worst <= 1.0);
  // nothing outside the view of C was written
  Matrix<T> outside = Cw, outside0 = C0w;
  outside.block(3, 1, m, n).setZero();
  outside0.block(3, 1, m, n).setZero();
  CHECK(outside == outside0);
}

const Shape3 kShapes[] = {{17, 17, 17}, {33, 20, 47}, {64, 129, 31}, {100, 19, 300}};

}  // namespace

TEMPLATE_TEST_CASE("gemm fallback (Eigen) equals a naive long-double loop: ops, strides, alpha, beta", "",
                   float, double) {
  using T = TestType;
  for (Op oa : {Op::N, Op::T})
    for (Op ob : {Op::N, Op::T})
      for (const Shape3& s : kShapes)
        for (T beta : {T(0), T(1), T(0.5), T(-2)}) {
          check_fallback<T>(oa, ob, s, T(1), beta);
          check_fallback<T>(oa, ob, s, T(-0.75), beta);
        }
}

TEST_CASE("gemm fallback: beta = 0 overwrites a NaN-filled C exactly like beta = 0 on a zero C") {
  const Matrix<double> A = testing::random_matrix<double>(40, 30, 1),
                       B = testing::random_matrix<double>(30, 25, 2);
  Matrix<double> c_nan = Matrix<double>::Constant(40, 25, std::numeric_limits<double>::quiet_NaN());
  Matrix<double> c_inf = Matrix<double>::Constant(40, 25, std::numeric_limits<double>::infinity());
  Matrix<double> c_zero = Matrix<double>::Zero(40, 25);
  gemm<double>(Op::N, Op::N, 1.5, A, B, 0.0, c_nan);
  gemm<double>(Op::N, Op::N, 1.5, A, B, 0.0, c_inf);
  gemm<double>(Op::N, Op::N, 1.5, A, B, 0.0, c_zero);
  CHECK(c_nan == c_zero);
  CHECK(c_inf == c_zero);
  // beta = 1 adds to C without scaling it; beta != 0 propagates NaN from C, as BLAS does
  Matrix<double> c_one = Matrix<double>::Ones(40, 25);
  gemm<double>(Op::N, Op::N, 1.5, A, B, 1.0, c_one);
  CHECK(testing::max_abs_diff(c_one, Matrix<double>(c_zero.array() + 1.0)) < 1e-12);
  Matrix<double> c_half = Matrix<double>::Constant(40, 25, std::numeric_limits<double>::quiet_NaN());
  gemm<double>(Op::N, Op::N, 1.5, A, B, 0.5, c_half);
  CHECK(c_half.array().isNaN().all());
}

TEST_CASE("gemm refuses an output that shares memory with an input") {
  Matrix<double> a = Matrix<double>::Random(20, 20), b = Matrix<double>::Random(20, 20);
  CHECK_THROWS_AS(gemm<double>(Op::N, Op::N, 1.0, a, b, 0.0, a), ShapeError);
  CHECK_THROWS_AS(gemm<double>(Op::N, Op::T, 1.0, a, b, 0.0, b), ShapeError);
  // a block of the same buffer that does not overlap is fine
  Matrix<double> big = Matrix<double>::Random(40, 20);
  CHECK_NOTHROW(gemm<double>(Op::N, Op::N, 1.0, big.topRows(20), b, 0.0, big.bottomRows(20)));
  CHECK_THROWS_AS(gemm<double>(Op::N, Op::N, 1.0, big.topRows(20), b, 0.0, big.middleRows(10, 20)),
                  ShapeError);
}
