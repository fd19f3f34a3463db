// Guide docs/guides/sparse_mola.md: sparse top-k LoRA experts (MoLA): only the k selected experts of a token
// are computed, by one GEMM pair per expert over its group of tokens; a balance loss; MoLA's per-layer
// expert allocation.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/molora.hpp>
#include <pemoe/adapters/sparse_lora.hpp>
#include <pemoe/moe/mola_allocation.hpp>

#include <cstdio>

using namespace pemoe;

int main() {
  // MoLA's preset: E = 8 experts of rank 8, top-2 renormalised gates, alpha 16, dropout 0.05; plus the
  // Switch balance loss with MoLA's coefficient.
  LoraExpertsConfig cfg = LoraExpertsConfig::mola(/*n_experts=*/8, /*top_k=*/2, /*r=*/8);
  cfg.router.aux.balance_coef = 1e-3;
  ParamStore<double> store;
  Rng rng(17);
  SparseLoRAExperts<double> layer({64, 64, true}, cfg);
  layer.register_params(store, "model.layers.0.self_attn.q_proj", rng);
  std::printf("parameters: %ld, trainable %ld\n", long(store.num_values()), long(store.num_trainable()));

  Matrix<double> x(256, 64), y(256, 64), dy(256, 64), dx(256, 64);
  Rng data(19);
  data.fill_normal(x.data(), x.size(), 0.0, 1.0);
  SparseLoRAExperts<double>::Cache cache;
  layer.set_training(true);
  layer.forward(x, y, cache);
  std::printf("tokens per expert (256 tokens x 2 slots):");
  Index total = 0;
  for (Index e = 0; e < 8; ++e) {
    std::printf(" %ld", long(SparseLoRAExperts<double>::group_size(cache, e)));
    total += SparseLoRAExperts<double>::group_size(cache, e);
  }
  std::printf("  (sum %ld)\n", long(total));
  std::printf("selected per token: %ld; non-zero gates per row: %ld\n", long(cache.router.topk_idx.cols()),
              long((cache.gates.row(0).array() != 0.0).count()));
  std::printf("balance loss E·Σ f_i P_i = %.4f (1 at perfect balance); aux_loss = coef × that = %.6f\n",
              cache.router.aux.balance, layer.aux_loss(cache));
  // Backward adds the balance loss's gradient to the router's on its own: pass only dL/dy.
  dy.setConstant(1.0 / double(dy.size()));
  store.zero_grad();
  layer.backward(x, cache, dy, dx);
  std::printf("router gradient norm: %.3e\n",
              Matrix<double>(store.grad_matrix(layer.router().weight_id())).norm());

  // With k = E and renormalised gates the sparse layer computes exactly the soft MoLoRA.
  LoraExpertsConfig all = LoraExpertsConfig::mola(8, /*top_k=*/8, 8);
  all.dropout = 0.0;
  LoraExpertsConfig soft = all;
  soft.router.mode = GateMode::soft;
  ParamStore<double> s1, s2;
  Rng r1(23), r2(23);  // same seed, same names: same initial values
  SparseLoRAExperts<double> sparse({64, 64, true}, all);
  MoLoRA<double> molora({64, 64, true}, soft);
  sparse.register_params(s1, "q_proj", r1);
  molora.register_params(s2, "q_proj", r2);
  auto b = sparse.experts().B_stack();  // non-zero B, so that the experts contribute
  data.fill_normal(b.data(), b.size(), 0.0, 0.1);
  s2.set("q_proj.lora_B.weight", s1.matrix(s1.id("q_proj.lora_B.weight")));
  Matrix<double> y_soft(256, 64);
  SparseLoRAExperts<double>::Cache c1;
  MoLoRA<double>::Cache c2;
  sparse.forward(x, y, c1);
  molora.forward(x, y_soft, c2);
  std::printf("k = E: max |y_sparse - y_molora| < 1e-12: %s\n",
              (y - y_soft).cwiseAbs().maxCoeff() < 1e-12 ? "yes" : "no");

  // MoLA's layer-wise allocation: more experts in higher layers (inverted triangle, 2-4-6-8 over 4 groups).
  const auto layers = mola_allocation(MolaShape::inverted_triangle, /*n_layers=*/12, /*top_k=*/2, /*r=*/8);
  std::printf("experts per layer (▽, 12 layers):");
  for (const auto& l : layers) std::printf(" %ld", long(l.n_experts));
  std::printf("\n");
  const auto shapes = llama_linear_shapes(/*d=*/4096, /*d_ff=*/11008);
  std::printf("LLaMA-2-7B, 32 layers, ▽ 2468 r=8: %ld trainable parameters\n",
              long(mola_params(mola_allocation(MolaShape::inverted_triangle, 32, 2, 8), shapes)));
  return total == 512 ? 0 : 1;
}
