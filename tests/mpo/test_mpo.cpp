// mpo/: shapes and parameter counts (spec §1.5, §2.2), exact reconstruction, gauges, spectra, truncation
// (Oseledets bound, monotonicity, rel_cutoff), padding, fix_auxiliary_central, apply by contraction vs
// rebuild.
#include <Eigen/SVD>
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pemoe/core/rng.hpp"
#include "pemoe/mpo/contract.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"
#include "pemoe/mpo/shape.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

const MpoShape kT5Wi{{4, 4, 8, 6, 4}, {3, 4, 4, 4, 4}};  // wi 3072×768 (PyTorch (out, in))

template <class T>
double rel_err(const Matrix<T>& a, const Matrix<T>& b) {
  return double((a.template cast<double>() - b.template cast<double>()).norm() /
                b.template cast<double>().norm());
}

// The k-th unfolding of W: (Π_{m<k} i_m j_m, rest) of the interleaved tensor, by explicit index loops.
Matrix<double> unfolding(const Matrix<double>& W, const MpoShape& s, Index k) {
  const Index n = s.n_cores();
  Index left = 1;
  for (Index m = 0; m < k; ++m) left *= s.row_modes[m] * s.col_modes[m];
  Matrix<double> U(left, W.size() / left);
  for (Index r = 0; r < W.rows(); ++r)
    for (Index c = 0; c < W.cols(); ++c) {
      // digits of r and c (row-major), then the interleaved flat index
      std::vector<Index> ir(n), jc(n);
      Index rr = r, cc = c;
      for (Index m = n - 1; m >= 0; --m) {
        ir[m] = rr % s.row_modes[m];
        rr /= s.row_modes[m];
        jc[m] = cc % s.col_modes[m];
        cc /= s.col_modes[m];
      }
      Index flat = 0;
      for (Index m = 0; m < n; ++m) flat = (flat * s.row_modes[m] + ir[m]) * s.col_modes[m] + jc[m];
      U(flat / U.cols(), flat % U.cols()) = W(r, c);
    }
  return U;
}

Eigen::VectorXd singular_values(const Matrix<double>& A) {
  return Eigen::BDCSVD<Eigen::MatrixXd>(Eigen::MatrixXd(A)).singularValues();
}

// Left block of bond k (cores 0..k-1) as (F_<k, d_k) and right block (cores k..n-1) as (d_k, F_>=k).
template <class T>
Matrix<double> left_block(const Mpo<T>& m, Index k) {
  std::vector<xt::xtensor<double, 4>> c;
  for (const auto& x : m.cores) c.push_back(xt::cast<double>(x));
  return detail::chain_contract(c, 0, k - 1);
}
template <class T>
Matrix<double> right_block(const Mpo<T>& m, Index k) {
  std::vector<xt::xtensor<double, 4>> c;
  for (const auto& x : m.cores) c.push_back(xt::cast<double>(x));
  Matrix<double> R = detail::chain_contract(c, k, m.n_cores() - 1);
  const Index d = Index(c[std::size_t(k)].shape()[0]);
  return Eigen::Map<Matrix<double>>(R.data(), d, R.size() / d);
}

// The symmetric gauge at bond k: LᵀL = Λ = R Rᵀ (diagonal, the singular values `sv` of that unfolding).
void check_symmetric_bond(const Mpo<double>& sym, Index k, const Eigen::VectorXd& sv) {
  const Matrix<double> L = left_block(sym, k), R = right_block(sym, k);
  REQUIRE(L.cols() <= sv.size());
  const Matrix<double> LtL = L.transpose() * L, RRt = R * R.transpose();
  Matrix<double> lam = Matrix<double>::Zero(L.cols(), L.cols());
  for (Index i = 0; i < L.cols(); ++i) lam(i, i) = sv(i);
  CHECK(testing::max_abs_diff(LtL, lam) < 1e-10 * sv(0));
  CHECK(testing::max_abs_diff(RRt, lam) < 1e-10 * sv(0));
}

// The mixed-canonical gauge: every core left of the central one is a left isometry, every core right of it
// a right isometry.
void check_mixed_isometries(const Mpo<double>& mix, const MpoShape& s) {
  const Index c = s.central();
  for (Index k = 0; k < s.n_cores(); ++k) {
    if (k == c) continue;
    const auto v = detail::views(mix.cores)[std::size_t(k)];
    const Matrix<double> G = k < c ? Matrix<double>(v.left().transpose() * v.left())
                                   : Matrix<double>(v.right() * v.right().transpose());
    CHECK(testing::max_abs_diff(G, Matrix<double>::Identity(G.rows(), G.cols())) < 1e-12);
  }
}

}  // namespace

TEST_CASE("MpoShape: balanced factorisations reproduce MPOE's presets; padding as for vocabularies") {
  CHECK(propose_modes(3072, 5) == std::vector<Index>{4, 4, 8, 6, 4});
  CHECK(propose_modes(768, 5) == std::vector<Index>{3, 4, 4, 4, 4});
  CHECK(propose_modes(1024, 5) == std::vector<Index>{4, 4, 4, 4, 4});
  CHECK(propose_modes(4096, 5) == std::vector<Index>{4, 4, 8, 8, 4});
  CHECK(propose_mpo_shape(3072, 768, 5) == kT5Wi);
  CHECK(propose_mpo_shape(3072, 768, 5, true) == kT5Wi);  // factorises well: no padding
  CHECK(propose_modes(4096, 5, true) == std::vector<Index>{4, 4, 8, 8, 4});
  // T5's vocabulary 32128 = 2^7·251 is padded to 8^5 (MPOE's EmbeddingMPO).
  CHECK(propose_modes(32128, 5, true) == std::vector<Index>{8, 8, 8, 8, 8});
  CHECK(propose_modes(32128, 5, false).size() == 5);
  for (Index n : {3, 5, 7})
    for (Index size : {60, 97, 768, 1000, 3072, 30522}) {
      for (bool pad : {false, true}) {
        const auto m = propose_modes(size, n, pad);
        REQUIRE(Index(m.size()) == n);
        Index p = 1;
        for (Index f : m) p *= f;
        if (pad)
          CHECK(p >= size);
        else
          CHECK(p == size);
        CHECK(*std::max_element(m.begin(), m.end()) == m[std::size_t((n - 1) / 2)]);  // largest in the centre
      }
    }
  CHECK(propose_modes(97, 3) == std::vector<Index>{1, 97, 1});  // a prime cannot be balanced without padding
  CHECK_THROWS_AS(propose_modes(0, 5), ConfigError);
  CHECK_THROWS_AS((MpoShape{{2, 2}, {2}}.validate()), ConfigError);
}

TEST_CASE("MPO parameter counts equal spec §1.5 (T5 FFN matrix) and §2.2 (MPOE vs Switch totals)") {
  CHECK(kT5Wi.bond_dims() == std::vector<Index>{1, 12, 192, 384, 16, 1});
  const auto d = kT5Wi.bond_dims();
  CHECK(kT5Wi.core_params(0, d) == 144);
  CHECK(kT5Wi.core_params(1, d) == 36864);
  CHECK(kT5Wi.core_params(2, d) == 2359296);
  CHECK(kT5Wi.core_params(3, d) == 147456);
  CHECK(kT5Wi.core_params(4, d) == 256);
  CHECK(kT5Wi.num_params() == 2544016);
  CHECK(kT5Wi.central_params() == 2359296);
  CHECK(kT5Wi.auxiliary_params() == 184720);
  CHECK(kT5Wi.transposed().num_params() == 2544016);       // wo
  const MpoShape large{{4, 4, 8, 8, 4}, {4, 4, 4, 4, 4}};  // 4096×1024
  CHECK(large.central_params() == 4194304);
  CHECK(large.auxiliary_params() == 328192);
  // §2.2: 24 FFN layers × 2 matrices.
  const double dense = 48.0 * 3072 * 768;
  CHECK(dense / 1e6 == Approx(113.2).margin(0.05));
  const double mpoe[] = {148.7, 184.2, 255.1}, sw[] = {453.0, 906.0, 1811.9};
  int idx = 0;
  for (int N : {4, 8, 16}) {
    const double m = 48.0 * double(kT5Wi.central_params() + N * kT5Wi.auxiliary_params());
    CHECK(m / 1e6 == Approx(mpoe[idx]).margin(0.05));
    CHECK(N * dense / 1e6 == Approx(sw[idx]).margin(0.05));
    ++idx;
  }
  // truncated: every bond capped
  CHECK(kT5Wi.bond_dims(64) == std::vector<Index>{1, 12, 64, 64, 16, 1});
}

// Eigen's QR/SVD run ~30x slower under AddressSanitizer: there the largest shapes check float only (or
// are skipped); the normal build checks everything.
namespace {
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

void check_exact_full_rank(Index rows, Index cols, const MpoShape& shape, bool with_double) {
  INFO(shape.to_string());
  const auto W = testing::random_matrix<double>(rows, cols, 7, 0.05);
  if (with_double) {
    const auto md = decompose<double>(W, shape);
    CHECK(md.num_params() == shape.num_params());
    CHECK(md.bond_dims() == shape.bond_dims());
    CHECK(md.truncation_error == 0.0);
    CHECK(rel_err(reconstruct(md), W) <= 1e-12);
  }
  const Matrix<float> Wf = W.cast<float>();
  const auto mf = decompose<float>(Wf, shape, {}, MpoGauge::left_canonical);
  CHECK(mf.num_params() == shape.num_params());
  CHECK(rel_err(reconstruct(mf), Wf) <= 1e-5);
}
}  // namespace

TEST_CASE("decompose/reconstruct is exact at full rank: 3072×768 (T5-base wi), float 1e-5, double 1e-12") {
  check_exact_full_rank(3072, 768, kT5Wi, !kSanitized);
}

TEST_CASE("decompose/reconstruct is exact at full rank: 768×768 (attention), float 1e-5, double 1e-12") {
  check_exact_full_rank(768, 768, MpoShape{{3, 4, 4, 4, 4}, {4, 4, 4, 4, 3}}, true);
}

TEST_CASE("decompose/reconstruct is exact at full rank: 4096×1024 (T5-large wi), float 1e-5, double 1e-12") {
  if (kSanitized) return;  // ~2 minutes under ASan; covered by the normal build
  check_exact_full_rank(4096, 1024, MpoShape{{4, 4, 8, 8, 4}, {4, 4, 4, 4, 4}}, true);
}

TEST_CASE("decompose/reconstruct is exact for random shapes with n = 3, 5, 7, all gauges") {
  Rng rng(3);
  for (Index n : {3, 5, 7})
    for (int rep = 0; rep < 3; ++rep) {
      const Index rows = 8 + Index(rng.below(120)), cols = 8 + Index(rng.below(120));
      const MpoShape s = propose_mpo_shape(rows, cols, n, true);
      const auto W = testing::random_matrix<double>(rows, cols, 100 + rep);
      for (MpoGauge g : {MpoGauge::symmetric, MpoGauge::mixed_canonical, MpoGauge::left_canonical}) {
        INFO(rows << "x" << cols << " " << s.to_string() << " gauge " << int(g));
        const auto m = decompose<double>(W, s, {}, g);
        CHECK(m.rows == rows);
        CHECK(m.cols == cols);
        CHECK(rel_err(reconstruct(m), W) <= 1e-12);
        const Matrix<float> Wf = W.cast<float>();
        CHECK(rel_err(reconstruct(decompose<float>(Wf, s, {}, g)), Wf) <= 1e-5);
      }
    }
}

TEST_CASE("gauges: symmetric blocks are isometry·Λ^½, mixed-canonical cores are orthonormal; spectra") {
  const MpoShape s{{2, 3, 4, 2, 2}, {2, 2, 3, 2, 2}};  // 96 × 48
  const auto W = testing::random_matrix<double>(96, 48, 11);
  const auto sym = decompose<double>(W, s, {}, MpoGauge::symmetric);
  const auto mix = decompose<double>(W, s, {}, MpoGauge::mixed_canonical);
  CHECK(testing::max_abs_diff(reconstruct(sym), reconstruct(mix)) < 1e-12);
  for (Index k = 1; k < s.n_cores(); ++k) {
    INFO("bond " << k);
    // the reported spectrum is the singular values of the k-th unfolding of W
    const Eigen::VectorXd sv = singular_values(unfolding(W, s, k));
    const auto& sp = sym.spectra[std::size_t(k - 1)];
    REQUIRE(Index(sp.size()) == sv.size());
    for (Index i = 0; i < sv.size(); ++i)
      CHECK(sp[std::size_t(i)] == Approx(sv(i)).epsilon(1e-10).margin(1e-12));
    check_symmetric_bond(sym, k, sv);
  }
  check_mixed_isometries(mix, s);
  // the central core of the mixed form carries the whole norm
  const Index c = s.central();
  const auto& C = mix.cores[std::size_t(c)];
  double c2 = 0;
  for (double v : C) c2 += v * v;
  CHECK(std::sqrt(c2) == Approx(W.norm()).epsilon(1e-12));
}

TEST_CASE("truncated gauges: symmetric blocks are isometry·Λ^½ (own spectra), mixed is orthonormal") {
  // Truncation at a later bond changes the Schmidt values of the earlier ones: those bonds are re-gauged by
  // the right-to-left sweep, the bonds from the last truncated one on take theirs from the TT-SVD sweep.
  const MpoShape s{{2, 3, 4, 2, 2}, {2, 2, 3, 2, 2}};  // 96 × 48, full bonds 1, 4, 24, 16, 4, 1
  const auto W = testing::random_matrix<double>(96, 48, 12);
  for (Index chi : {2, 3, 8, 20}) {
    TruncationPolicy pol;
    pol.max_bond = chi;
    const auto sym = decompose<double>(W, s, pol, MpoGauge::symmetric);
    const auto mix = decompose<double>(W, s, pol, MpoGauge::mixed_canonical);
    const Matrix<double> Wt = reconstruct(sym);
    CHECK(testing::max_abs_diff(reconstruct(mix), Wt) < 1e-12);
    CHECK(sym.truncation_error == Approx((Wt - W).norm()).epsilon(1e-8));
    for (Index k = 1; k < s.n_cores(); ++k) {
      INFO("max_bond " << chi << ", bond " << k);
      check_symmetric_bond(sym, k, singular_values(unfolding(Wt, s, k)));
    }
    check_mixed_isometries(mix, s);
  }
}

TEST_CASE("decompose's SVD backend is the one this binary was built for") {
#ifdef PEMOE_TEST_EXPECT_LAPACK
  CHECK(decompose_uses_lapack());
#else
  CHECK_FALSE(decompose_uses_lapack());
#endif
}

TEST_CASE("symmetric gauge survives zero singular values (guarded inverse)") {
  // A rank-2 matrix: most Schmidt values are exactly zero, the reference's Λ^{-1/2} would be inf.
  const MpoShape s{{2, 4, 2}, {2, 3, 2}};
  const Matrix<double> W =
      testing::random_matrix<double>(16, 2, 1) * testing::random_matrix<double>(2, 12, 2);
  for (MpoGauge g : {MpoGauge::symmetric, MpoGauge::mixed_canonical}) {
    const auto m = decompose<double>(W, s, {}, g);
    CHECK(m.bond_dims() == s.bond_dims());  // shapes do not depend on the data
    const Matrix<double> Wr = reconstruct(m);
    CHECK(Wr.allFinite());
    CHECK(rel_err(Wr, W) <= 1e-12);
  }
  const auto z = decompose<double>(Matrix<double>::Zero(16, 12), s);
  CHECK(reconstruct(z).isZero());
}

TEST_CASE("truncation: error = ‖W − MPO‖, ≤ sqrt(Σ ε_k²), non-increasing in max_bond") {
  const MpoShape s{{2, 2, 4, 2, 2}, {2, 2, 3, 2, 2}};  // 64 × 48, full bonds 1,4,16,16,4,1
  const Matrix<double> low =
      testing::random_matrix<double>(64, 3, 5) * testing::random_matrix<double>(3, 48, 6);
  const Matrix<double> noisy = low + testing::random_matrix<double>(64, 48, 7, 1e-2);
  for (const Matrix<double>* Wp : {&noisy, static_cast<const Matrix<double>*>(nullptr)}) {
    const Matrix<double> W = Wp ? *Wp : testing::random_matrix<double>(64, 48, 8);
    std::vector<Eigen::VectorXd> sv;
    for (Index k = 1; k < s.n_cores(); ++k) sv.push_back(singular_values(unfolding(W, s, k)));
    double prev = INFINITY;
    for (Index chi = 1; chi <= 16; ++chi) {
      INFO((Wp ? "low rank + noise" : "random") << ", max_bond " << chi);
      TruncationPolicy pol;
      pol.max_bond = chi;
      const auto m = decompose<double>(W, s, pol);
      CHECK(m.bond_dims() == s.bond_dims(chi));
      const double actual = (reconstruct(m) - W).norm();
      CHECK(m.truncation_error == Approx(actual).epsilon(1e-8).margin(1e-12));
      double bound2 = 0;  // Σ_k ε_k², ε_k the best rank-d_k error of unfolding k
      const auto d = m.bond_dims();
      for (Index k = 1; k < s.n_cores(); ++k)
        for (Index i = d[std::size_t(k)]; i < sv[std::size_t(k - 1)].size(); ++i)
          bound2 += sv[std::size_t(k - 1)](i) * sv[std::size_t(k - 1)](i);
      CHECK(actual <= std::sqrt(bound2) * (1 + 1e-10) + 1e-12);
      CHECK(actual <= prev * (1 + 1e-10) + 1e-12);
      prev = actual;
    }
    CHECK(prev < 1e-12 * W.norm());
  }
}

TEST_CASE("rel_cutoff discards at most the stated weight per bond; min_bond keeps a floor") {
  const MpoShape s{{2, 2, 4, 2, 2}, {2, 2, 3, 2, 2}};
  const Matrix<double> W =
      testing::random_matrix<double>(64, 3, 5) * testing::random_matrix<double>(3, 48, 6) +
      testing::random_matrix<double>(64, 48, 9, 0.05);
  for (double cut : {1e-4, 1e-2, 0.1, 0.5}) {
    TruncationPolicy pol;
    pol.rel_cutoff = cut;
    const auto m = decompose<double>(W, s, pol);
    const auto d = m.bond_dims();
    double discarded2 = 0;
    for (Index k = 1; k < s.n_cores(); ++k) {
      INFO("cutoff " << cut << " bond " << k);
      const auto& sp = m.spectra[std::size_t(k - 1)];
      double total = 0, gone = 0;
      for (double v : sp) total += v * v;
      for (std::size_t i = std::size_t(d[std::size_t(k)]); i < sp.size(); ++i) gone += sp[i] * sp[i];
      discarded2 += gone;
      CHECK(gone <= cut * total * (1 + 1e-12));
      if (d[std::size_t(k)] > 1) {  // keeping one fewer would discard too much
        const double next = sp[std::size_t(d[std::size_t(k)] - 1)];
        CHECK(gone + next * next > cut * total);
      }
    }
    CHECK(m.truncation_error == Approx(std::sqrt(discarded2)).epsilon(1e-12));
    CHECK(m.truncation_error == Approx((reconstruct(m) - W).norm()).epsilon(1e-8).margin(1e-10));
  }
  TruncationPolicy pol;
  pol.rel_cutoff = 0.9;
  pol.min_bond = 3;
  const auto m = decompose<double>(W, s, pol);
  const auto d = m.bond_dims();
  for (Index k = 1; k < s.n_cores(); ++k) CHECK(d[std::size_t(k)] >= std::min<Index>(3, s.bond_dims()[k]));
  CHECK_THROWS_AS(decompose<double>(W, s, TruncationPolicy{0}), ConfigError);
  TruncationPolicy bad;
  bad.rel_cutoff = 1.0;
  CHECK_THROWS_AS(decompose<double>(W, s, bad), ConfigError);
  CHECK_THROWS_AS(decompose<double>(testing::random_matrix<double>(65, 48, 1), s), ShapeError);
}

TEST_CASE("padding round-trips: a 30×20 matrix in a padded shape") {
  const MpoShape s{{2, 4, 4}, {3, 2, 4}};                   // 32 × 24 holds 30 × 21
  CHECK(propose_mpo_shape(97, 21, 3, true).rows() == 100);  // 97 is prime: padded to 4·5·5
  const auto W = testing::random_matrix<double>(30, 21, 4);
  const auto m = decompose<double>(W, s);
  CHECK(m.padded());
  const Matrix<double> Wr = reconstruct(m);
  REQUIRE(Wr.rows() == 30);
  REQUIRE(Wr.cols() == 21);
  CHECK(rel_err(Wr, W) <= 1e-12);
  // the padded part of the full tensor is zero
  const Matrix<double> full = reconstruct(m.cores, m.shape);
  CHECK(full.rows() == s.rows());
  CHECK(full.bottomRows(s.rows() - 30).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(full.rightCols(s.cols() - 21).cwiseAbs().maxCoeff() < 1e-12);
  const auto x = testing::random_matrix<double>(5, 21, 8);
  Matrix<double> y1(5, 30), y2(5, 30);
  mpo_apply_by_contraction<double>(x, m, y1);
  mpo_apply_by_rebuild<double>(x, m, y2);
  CHECK(testing::max_abs_diff(y1, y2) < 1e-10);
  CHECK(testing::max_abs_diff(y1, Matrix<double>(x * W.transpose())) < 1e-10);
}

TEST_CASE("mpo_apply: contraction equals rebuild (float and double, truncated, n = 3, 5, 7)") {
  int discriminating = 0;
  for (Index n : {3, 5, 7}) {
    const MpoShape s = propose_mpo_shape(96, 80, n, true);
    for (Index chi : {2, 5, 1000}) {
      INFO(s.to_string() << " max_bond " << chi);
      TruncationPolicy pol;
      pol.max_bond = chi;
      const auto W = testing::random_matrix<double>(96, 80, 12);
      const auto m = decompose<double>(W, s, pol);
      const auto x = testing::random_matrix<double>(7, 80, 13);
      Matrix<double> yc(7, 96), yr(7, 96);
      mpo_apply_by_contraction<double>(x, m, yc);
      mpo_apply_by_rebuild<double>(x, m, yr);
      CHECK(testing::max_abs_diff(yc, yr) < 1e-10 * (1 + yr.cwiseAbs().maxCoeff()));
      const auto mf = decompose<float>(W.cast<float>(), s, pol);
      Matrix<float> ycf(7, 96), yrf(7, 96);
      const Matrix<float> xf = x.cast<float>();
      mpo_apply_by_contraction<float>(xf, mf, ycf);
      mpo_apply_by_rebuild<float>(xf, mf, yrf);
      CHECK(testing::max_abs_diff(ycf, yrf) < 1e-4f * (1 + yrf.cwiseAbs().maxCoeff()));
      // the path mpo_apply reports is the path it ran: its output has exactly that path's bits
      Matrix<double> ya(7, 96);
      const MpoApplyPath p = mpo_apply<double>(x, m, ya);
      CHECK(ya == (p == MpoApplyPath::contraction ? yc : yr));
      discriminating += yc != yr;  // the two paths round differently, so the check above tells them apart
      for (MpoApplyPath forced : {MpoApplyPath::rebuild, MpoApplyPath::contraction}) {
        CHECK(mpo_apply<double>(x, m, ya, forced) == forced);
        CHECK(ya == (forced == MpoApplyPath::contraction ? yc : yr));
      }
    }
  }
  CHECK(discriminating > 0);
  const auto m = decompose<double>(testing::random_matrix<double>(8, 8, 1), MpoShape{{2, 2, 2}, {2, 2, 2}});
  Matrix<double> x(3, 7), y(3, 8);
  CHECK_THROWS_AS(mpo_apply<double>(x, m, y), ShapeError);
}

TEST_CASE("mpo_apply FLOP model: rebuild at full rank, contraction at small bonds and few tokens") {
  // Cores with the right shapes are enough for the model (values do not matter).
  auto zeros = [](const MpoShape& s, Index chi) {
    Mpo<float> m;
    m.shape = s;
    m.rows = s.rows();
    m.cols = s.cols();
    const auto d = s.bond_dims(chi);
    for (Index k = 0; k < s.n_cores(); ++k)
      m.cores.push_back(
          xt::xtensor<float, 4>::from_shape({std::size_t(d[k]), std::size_t(s.row_modes[k]),
                                             std::size_t(s.col_modes[k]), std::size_t(d[k + 1])}));
    return m;
  };
  const auto full = zeros(kT5Wi, 1 << 30);
  for (Index N : {64, 2048}) CHECK(mpo_apply_cost(full, N).best == MpoApplyPath::rebuild);
  const auto c = mpo_apply_cost(full, 2048);
  CHECK(c.dense_flops == Approx(2.0 * 2048 * 3072 * 768));
  // the cheapest order: C absorbs its left block (0.9 GFLOP) then its right block (1.8)
  CHECK(c.rebuild_flops - c.dense_flops == Approx(2.72e9).epsilon(0.01));
  CHECK(c.contraction_flops > 100 * c.rebuild_flops);
  CHECK(mpo_apply_cost(zeros(kT5Wi, 2), 64).best == MpoApplyPath::contraction);
  CHECK(mpo_apply_cost(zeros(kT5Wi, 4), 64).best == MpoApplyPath::contraction);
  CHECK(mpo_apply_cost(zeros(kT5Wi, 8), 2048, 0.0).best == MpoApplyPath::contraction);  // by flops alone
  CHECK(mpo_apply_cost(zeros(kT5Wi, 8), 2048).best == MpoApplyPath::rebuild);  // its memory traffic counted
}

TEST_CASE("mpo_apply picks the path that measures faster, where the cost model separates them clearly") {
  // Random cores of the right shapes (timing does not depend on the values). One thread: the cost model has
  // no thread term, and on a loaded 2-core machine OpenMP's barriers would dominate the small contraction.
#ifdef _OPENMP
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  auto random_mpo = [](const MpoShape& s, Index chi) {
    Mpo<float> m;
    m.shape = s;
    m.rows = s.rows();
    m.cols = s.cols();
    const auto d = s.bond_dims(chi);
    Rng rng(7);
    for (Index k = 0; k < s.n_cores(); ++k) {
      auto c = xt::xtensor<float, 4>::from_shape({std::size_t(d[k]), std::size_t(s.row_modes[k]),
                                                  std::size_t(s.col_modes[k]), std::size_t(d[k + 1])});
      rng.fill_normal(c.data(), Index(c.size()), 0.0, 0.3);
      m.cores.push_back(c);
    }
    return m;
  };
  // best of `reps` wall-clock times (the minimum filters out preemption by other processes)
  auto best_time = [](auto&& f, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  struct Case {
    const char* what;
    MpoShape shape;
    Index chi, n_tokens;
    MpoApplyPath expected;
  };
  for (const Case& c : {Case{"1024x1024, bonds 2, 16 tokens", MpoShape{{4, 4, 4, 4, 4}, {4, 4, 4, 4, 4}}, 2,
                             16, MpoApplyPath::contraction},
                        Case{"64x64 at full rank, 1024 tokens", MpoShape{{4, 4, 4}, {4, 4, 4}}, 1000, 1024,
                             MpoApplyPath::rebuild}}) {
    DYNAMIC_SECTION(c.what) {
      const auto m = random_mpo(c.shape, c.chi);
      const Matrix<float> x = testing::random_matrix<float>(c.n_tokens, m.cols, 8);
      Matrix<float> yr(c.n_tokens, m.rows), yc(c.n_tokens, m.rows), ya(c.n_tokens, m.rows);
      // the model separates the two paths by a factor of 8 or more
      const auto cost = mpo_apply_cost(m, c.n_tokens);
      const double model_rb = cost.rebuild_flops + kMpoFlopsPerFloatMoved * cost.rebuild_moved;
      const double model_ct = cost.contraction_flops + kMpoFlopsPerFloatMoved * cost.contraction_moved;
      INFO("model: rebuild " << model_rb << ", contraction " << model_ct);
      REQUIRE(std::max(model_rb, model_ct) > 8 * std::min(model_rb, model_ct));
      CHECK((model_ct < model_rb ? MpoApplyPath::contraction : MpoApplyPath::rebuild) == c.expected);
      // measured: the ordering agrees with the model
      mpo_apply_by_rebuild<float>(x, m, yr);  // warm-up (allocations, caches)
      mpo_apply_by_contraction<float>(x, m, yc);
      const double t_rb = best_time([&] { mpo_apply_by_rebuild<float>(x, m, yr); }, 5);
      const double t_ct = best_time([&] { mpo_apply_by_contraction<float>(x, m, yc); }, 5);
      const MpoApplyPath faster = t_ct < t_rb ? MpoApplyPath::contraction : MpoApplyPath::rebuild;
      INFO("measured: rebuild " << t_rb * 1e3 << " ms, contraction " << t_ct * 1e3 << " ms");
      CHECK(faster == c.expected);
      // mpo_apply runs the faster path: it reports it, it produces exactly its bits, and it takes its time
      MpoApplyPath taken = MpoApplyPath::automatic;
      const double t_auto = best_time([&] { taken = mpo_apply<float>(x, m, ya); }, 5);
      INFO("mpo_apply (automatic): " << t_auto * 1e3 << " ms");
      CHECK(taken == faster);
      REQUIRE(yr != yc);
      CHECK(ya == (faster == MpoApplyPath::contraction ? yc : yr));
      CHECK(t_auto < std::sqrt(t_rb * t_ct));  // nearer the faster path's time than the slower one's
    }
  }
#ifdef _OPENMP
  omp_set_num_threads(saved_threads);
#endif
}

TEST_CASE("fix_auxiliary_central: recovers C for the same matrix, fits a new one exactly at full rank") {
  const MpoShape s{{2, 3, 4, 2, 2}, {2, 2, 3, 2, 2}};
  const auto W = testing::random_matrix<double>(96, 48, 21);
  const auto m = decompose<double>(W, s);
  const Index c = m.central();
  const auto C = fix_auxiliary_central<double>(W, m);
  REQUIRE(C.shape() == m.cores[std::size_t(c)].shape());
  double diff = 0;
  for (std::size_t e = 0; e < C.size(); ++e)
    diff = std::max(diff, std::abs(C.data()[e] - m.cores[std::size_t(c)].data()[e]));
  CHECK(diff < 1e-10);
  const auto W2 = testing::random_matrix<double>(96, 48, 22);
  auto m2 = m;
  m2.cores[std::size_t(c)] = fix_auxiliary_central<double>(W2, m);
  CHECK(rel_err(reconstruct(m2), W2) < 1e-10);
  // truncated auxiliaries: the least-squares central is no worse than the original central
  TruncationPolicy pol;
  pol.max_bond = 3;
  auto t = decompose<double>(W, s, pol);
  const double before = (reconstruct(t) - W).norm();
  t.cores[std::size_t(c)] = fix_auxiliary_central<double>(W, t);
  CHECK((reconstruct(t) - W).norm() <= before * (1 + 1e-9));
  CHECK_THROWS_AS(fix_auxiliary_central<double>(testing::random_matrix<double>(95, 48, 1), m), ShapeError);
}
