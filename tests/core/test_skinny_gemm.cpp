// detail/skinny_gemm.hpp through `gemm`: every dispatched shape against a naive loop, with tails, strided
// views, alpha/beta, and the same bits for any row split or thread count.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/gemm.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

// Naive alpha·op(A)·op(B) + beta·C in long double.
template <class T>
Matrix<T> naive(Op oa, Op ob, T alpha, const Matrix<T>& A, const Matrix<T>& B, T beta, const Matrix<T>& C) {
  const Matrix<T> a = oa == Op::N ? Matrix<T>(A) : Matrix<T>(A.transpose());
  const Matrix<T> b = ob == Op::N ? Matrix<T>(B) : Matrix<T>(B.transpose());
  Matrix<T> out(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j) {
      long double s = 0;
      for (Index l = 0; l < a.cols(); ++l) s += static_cast<long double>(a(i, l)) * b(l, j);
      out(i, j) = T(static_cast<long double>(alpha) * s +
                    (beta != T(0) ? static_cast<long double>(beta) * C(i, j) : 0.0L));
    }
  return out;
}

struct Case {
  Op oa, ob;
  Index m, n, k;
};

// Operands stored so that op(A) is (m, k) and op(B) is (k, n).
template <class T>
void check_case(const Case& c, T alpha, T beta, T tol) {
  const Index ar = c.oa == Op::N ? c.m : c.k, ac = c.oa == Op::N ? c.k : c.m;
  const Index br = c.ob == Op::N ? c.k : c.n, bc = c.ob == Op::N ? c.n : c.k;
  // Strided views: each operand is the middle columns of a wider matrix.
  Matrix<T> Aw = testing::random_matrix<T>(ar, ac + 5, 1), Bw = testing::random_matrix<T>(br, bc + 3, 2);
  Matrix<T> Cw = testing::random_matrix<T>(c.m, c.n + 7, 3);
  const Matrix<T> A = Aw.middleCols(2, ac), B = Bw.middleCols(1, bc), C0 = Cw.middleCols(4, c.n);
  const Matrix<T> want = naive(c.oa, c.ob, alpha, A, B, beta, C0);
  if (beta == T(0)) Cw.middleCols(4, c.n).setConstant(T(NAN));  // beta = 0 must not read C
  gemm<T>(c.oa, c.ob, alpha, Aw.middleCols(2, ac), Bw.middleCols(1, bc), beta, Cw.middleCols(4, c.n));
  const Matrix<T> got = Cw.middleCols(4, c.n);
  INFO("op_a " << int(c.oa) << " op_b " << int(c.ob) << " m " << c.m << " n " << c.n << " k " << c.k
               << " alpha " << alpha << " beta " << beta);
  REQUIRE(got.allFinite());
  const T scale = std::max<T>(T(1), want.cwiseAbs().maxCoeff());
  CHECK(testing::max_abs_diff(got, want) / scale < tol);
  // Columns outside the view are untouched.
  const Matrix<T> C_all = testing::random_matrix<T>(c.m, c.n + 7, 3);
  CHECK(Cw.leftCols(4) == C_all.leftCols(4));
  CHECK(Cw.rightCols(3) == C_all.rightCols(3));
}

// Every dispatch of `gemm` to a skinny kernel, plus sizes around the packet and block widths.
std::vector<Case> skinny_cases() {
  std::vector<Case> cases;
  for (Index small : {1, 3, 8, 16})
    for (Index big : {1, 7, 33, 130})
      for (Index other : {5, 64, 67}) {
        cases.push_back({Op::N, Op::T, big, small, other});  // dot products
        cases.push_back({Op::N, Op::N, big, other, small});  // rows mixed
        cases.push_back({Op::T, Op::N, small, other, big});  // outer products (rows = big, blocked by 64)
        cases.push_back({Op::T, Op::N, other, small, big});  // transposed outer products
        cases.push_back({Op::N, Op::N, big, small, other});  // Bᵀ small, dot products
        cases.push_back({Op::N, Op::T, big, other, small});  // Bᵀ small, rows mixed
      }
  return cases;
}

}  // namespace

TEMPLATE_TEST_CASE("gemm: skinny kernels against a naive loop (tails, strides, alpha, beta)", "", float,
                   double) {
  using T = TestType;
  const T tol = std::is_same<T, float>::value ? T(2e-5) : T(1e-12);
  for (const Case& c : skinny_cases()) {
    check_case<T>(c, T(1), T(0), tol);
    check_case<T>(c, T(-0.5), T(1), tol);
    check_case<T>(c, T(2), T(-1.5), tol);
  }
}

TEST_CASE("gemm: skinny kernels give the same bits for any row split and thread count") {
  const Index m = 203, n = 8, k = 301;
  const auto A = testing::random_matrix<float>(m, k, 4), B = testing::random_matrix<float>(n, k, 5);
  const auto G = testing::random_matrix<float>(m, n, 6), L = testing::random_matrix<float>(n, k, 7);
  Matrix<float> whole(m, n), mixed(m, k), outer(n, k);
  gemm<float>(Op::N, Op::T, 1.f, A, B, 0.f, whole);
  gemm<float>(Op::N, Op::N, 1.f, G, L, 0.f, mixed);
  gemm<float>(Op::T, Op::N, 1.f, G, A, 0.f, outer);
  // Row by row: each output row of the dot and mix kernels is summed in the same order.
  for (Index i = 0; i < m; ++i) {
    Matrix<float> row(1, n), mrow(1, k);
    gemm<float>(Op::N, Op::T, 1.f, A.middleRows(i, 1), B, 0.f, row);
    gemm<float>(Op::N, Op::N, 1.f, G.middleRows(i, 1), L, 0.f, mrow);
    CHECK(row == whole.row(i));
    CHECK(mrow == mixed.row(i));
  }
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  Matrix<float> whole1(m, n), mixed1(m, k), outer1(n, k);
  gemm<float>(Op::N, Op::T, 1.f, A, B, 0.f, whole1);
  gemm<float>(Op::N, Op::N, 1.f, G, L, 0.f, mixed1);
  gemm<float>(Op::T, Op::N, 1.f, G, A, 0.f, outer1);
  omp_set_num_threads(saved);
  CHECK(whole1 == whole);
  CHECK(mixed1 == mixed);
  CHECK(outer1 == outer);
#endif
}

TEMPLATE_TEST_CASE("skinny kernels with a lower-triangular G skip its zero half: the same bits as in full",
                   "", float, double) {
  // causal attention's G·V and Gᵀ·V (detail::skinny_ab / skinny_atb with `lower`): S not a multiple of the
  // row block (8) and above the 64-row block of the transposed form, D not a multiple of a packet, strided V
  for (const Index S : {Index(1), Index(7), Index(64), Index(150)})
    for (const Index D : {Index(5), Index(20), Index(64)}) {
      Matrix<TestType> G = testing::random_matrix<TestType>(S, S, 4);
      for (Index i = 0; i < S; ++i) G.row(i).tail(S - i - 1).setZero();  // G(i, p) = 0 for p > i
      const Matrix<TestType> Vw = testing::random_matrix<TestType>(S, D + 3, 5);
      const TestType alpha = TestType(0.37);
      for (const bool transposed : {false, true}) {
        Matrix<TestType> full(S, D), skipped(S, D);
        skipped.setConstant(TestType(NAN));  // beta = 0: C is not read
        const detail::AxpbyOut<TestType> out_full{full.data(), D, alpha, TestType(0)};
        const detail::AxpbyOut<TestType> out_skip{skipped.data(), D, alpha, TestType(0)};
        if (transposed) {
          detail::skinny_atb(G.data(), S, Vw.data() + 1, D + 3, S, S, D, out_full, false);
          detail::skinny_atb(G.data(), S, Vw.data() + 1, D + 3, S, S, D, out_skip, true);
        } else {
          detail::skinny_ab(G.data(), S, Vw.data() + 1, D + 3, S, S, D, out_full, false);
          detail::skinny_ab(G.data(), S, Vw.data() + 1, D + 3, S, S, D, out_skip, true);
        }
        const Matrix<TestType> V = Vw.middleCols(1, D);
        const Matrix<TestType> want =
            naive(transposed ? Op::T : Op::N, Op::N, alpha, G, V, TestType(0), full);
        INFO("S " << S << " D " << D << (transposed ? " Gᵀ·V" : " G·V"));
        CHECK(skipped == full);  // the skipped terms are exact zeros
        const TestType tol = std::is_same<TestType, float>::value ? TestType(1e-5) : TestType(1e-13);
        CHECK(testing::max_abs_diff(skipped, want) / std::max<TestType>(1, want.cwiseAbs().maxCoeff()) < tol);
      }
    }
}
