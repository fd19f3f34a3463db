// Guide docs/guides/mpo.md: a matrix as a matrix product operator (MPO), truncation, and MPOE's expert bank
// whose experts share the central tensor; MPOE's gradient mask.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/mpoe.hpp>
#include <pemoe/mpo/decompose.hpp>
#include <pemoe/mpo/reconstruct.hpp>
#include <pemoe/mpo/shape.hpp>
#include <pemoe/train/gradient_mask.hpp>

#include <cmath>
#include <cstdio>
#include <string>

using namespace pemoe;

static std::string list_str(const std::vector<Index>& v) {
  std::string r = "[";
  for (std::size_t i = 0; i < v.size(); ++i) r += (i ? "," : "") + std::to_string(v[i]);
  return r + "]";
}

int main() {
  // ---- 1. decompose a (64, 48) matrix into 3 cores, exactly and truncated --------------------------------
  Rng rng(37);
  Matrix<double> W(64, 48);
  rng.fill_normal(W.data(), W.size(), 0.0, 1.0);
  const MpoShape shape = propose_mpo_shape(/*rows=*/64, /*cols=*/48, /*n_cores=*/3);
  std::printf("shape %s, central core %ld\n", shape.to_string().c_str(), long(shape.central()));
  const Mpo<double> exact = decompose<double>(W, shape);
  std::printf("full rank: bonds %s, %ld parameters (dense %ld), exact: %s\n",
              list_str(exact.bond_dims()).c_str(), long(exact.num_params()), long(W.size()),
              (reconstruct(exact) - W).norm() / W.norm() < 1e-12 ? "yes" : "no");
  TruncationPolicy policy;
  policy.max_bond = 8;
  const Mpo<double> small = decompose<double>(W, shape, policy);
  const double rebuilt_err = (reconstruct(small) - W).norm() / W.norm();
  std::printf("max_bond 8: bonds %s, %ld parameters (central %ld, auxiliary %ld), relative error %.4f\n",
              list_str(small.bond_dims()).c_str(), long(small.num_params()), long(small.central_params()),
              long(small.auxiliary_params()), small.relative_truncation_error());
  std::printf("reported error == |W - reconstruct| / |W|: %s\n",
              std::abs(rebuilt_err - small.relative_truncation_error()) < 1e-9 ? "yes" : "no");

  // ---- 2. MPOE: 4 experts decomposed from one dense FFN, sharing the central tensors ---------------------
  MpoeConfig cfg;
  cfg.d_model = 16;
  cfg.d_ff = 64;
  cfg.n_experts = 4;
  cfg.n_cores = 3;
  ParamStore<double> store;
  MpoeFfn<double> ffn(cfg);
  ffn.register_params(store, "h.0.mlp", rng);
  for (const auto& e : store.entries())
    if (e.name.find("experts.0.") != std::string::npos || e.name.find("experts.") == std::string::npos)
      std::printf("  %-32s %ld values\n", e.name.c_str(), long(e.size));
  std::printf("  (experts 1-3 alike)\nbank: %ld parameters; 4 dense experts: %ld\n", long(store.num_values()),
              long(4 * 2 * cfg.d_model * cfg.d_ff + 4 * (cfg.d_model + 1)));

  // Initialised from a "pretrained" FFN, the bank computes that FFN for any routing (exact at full rank).
  Matrix<double> wi(64, 16), wo(16, 64), x(32, 16), y(32, 16);
  rng.fill_normal(wi.data(), wi.size(), 0.0, 0.25);
  rng.fill_normal(wo.data(), wo.size(), 0.0, 0.125);
  rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
  ffn.load_dense(wi, wo);
  MpoeFfn<double>::Cache cache;
  ffn.forward(x, y, cache);
  const Matrix<double> dense = (x * wi.transpose()).cwiseMax(0.0) * wo.transpose();
  std::printf("y == ReLU(x wiᵀ) woᵀ: %s; tokens per expert:",
              (y - dense).cwiseAbs().maxCoeff() < 1e-10 ? "yes" : "no");
  for (Index e = 0; e < 4; ++e)
    std::printf(" %ld", long(cache.offsets[std::size_t(e) + 1] - cache.offsets[std::size_t(e)]));
  std::printf("\n");

  // ---- 3. MPOE's gradient mask: on a fraction p_b of the steps the shared central tensors do not move ----
  GradientMask mask(GradientMaskConfig{/*p_b=*/0.5}, Rng(41));
  std::printf("central tensors updated at steps 0-9:");
  for (int step = 0; step < 10; ++step) {
    const std::vector<bool> update = mask.next(store);  // pass to AdamW::step(store, update, ...)
    std::printf(" %d", int(update[std::size_t(ffn.central_id(0))]));
  }
  std::printf("\n");
  return (y - dense).cwiseAbs().maxCoeff() < 1e-10 ? 0 : 1;
}
