// Guide docs/guides/routers.md: the router's gate modes on the same logits, its auxiliary losses, and an
// AuxLossCollector summing them over the routers of a model.
// ctest runs this program and compares its output with the guide.
#include <pemoe/moe/router.hpp>

#include <cmath>
#include <cstdio>

using namespace pemoe;

static void print_gates(const char* name, const Matrix<double>& g) {
  std::printf("%-12s", name);
  for (Index t = 0; t < 2; ++t) {
    std::printf(t ? "   |" : " ");
    for (Index e = 0; e < g.cols(); ++e) std::printf(" %.3f", g(t, e));
  }
  std::printf("\n");
}

int main() {
  // Four routers with the same weights (same seed and name), E = 4 experts over d_in = 8 features.
  Matrix<double> u(2, 8);
  Rng data(29);
  data.fill_normal(u.data(), u.size(), 0.0, 1.0);
  std::printf("gates of tokens 0 | 1 (E = 4)\n");
  for (GateMode mode : {GateMode::soft, GateMode::topk_mask, GateMode::topk_renorm, GateMode::switch_top1}) {
    RouterConfig cfg;
    cfg.d_in = 8;
    cfg.n_experts = 4;
    cfg.mode = mode;
    cfg.top_k = 2;
    cfg.init = RouterInit::normal;
    cfg.init_std = 0.5;
    Router<double> router(cfg);
    ParamStore<double> store;
    Rng rng(31);
    router.register_params(store, "router", rng);
    Matrix<double> gates(2, 4);
    Router<double>::Cache cache;
    router.forward(u, gates, cache);
    const char* names[] = {"soft", "topk_mask", "topk_renorm", "noisy_topk", "switch_top1"};
    print_gates(names[int(mode)], gates);
  }

  // Auxiliary losses of one router over 512 tokens: Switch balance (1 at perfect balance), z-loss, CV².
  RouterConfig cfg;
  cfg.d_in = 8;
  cfg.n_experts = 4;
  cfg.mode = GateMode::topk_renorm;
  cfg.top_k = 2;
  cfg.init_std = 0.5;
  cfg.aux.balance_coef = 1e-2;
  cfg.aux.z_coef = 1e-3;
  cfg.aux.importance_coef = 1e-2;
  Matrix<double> tokens(512, 8), gates(512, 4), dgates(512, 4), du(512, 8);
  data.fill_normal(tokens.data(), tokens.size(), 0.0, 1.0);
  ParamStore<double> store;
  Rng rng(31);
  Router<double> router(cfg);
  router.register_params(store, "layers.0.router", rng);
  Router<double>::Cache cache;
  router.forward(tokens, gates, cache);
  std::printf("balance %.4f  z %.4f  importance CV² %.4f\n", cache.aux.balance, cache.aux.z,
              cache.aux.importance);
  std::printf("aux_loss = 1e-2·balance + 1e-3·z + 1e-2·CV² = %.6f\n", router.aux_loss(cache));
  // Backward adds the aux losses' gradients itself: with dL/dgates = 0 the router still gets a gradient.
  dgates.setZero();
  store.zero_grad();
  router.backward(tokens, cache, dgates, du);
  std::printf("with dL/dgates = 0: |dW_router| = %.4e\n",
              Matrix<double>(store.grad_matrix(router.weight_id())).norm());

  // A collector sums the aux losses of every router of a model during one step (or averages them).
  AuxLossCollector collector(LayerReduction::sum);
  Router<double> second(cfg);
  second.register_params(store, "layers.1.router", rng);
  router.set_collector(&collector);
  second.set_collector(&collector);
  collector.reset();  // at the start of every step
  Router<double>::Cache c0, c1;
  router.forward(tokens, gates, c0);
  second.forward(tokens.bottomRows(256), gates.bottomRows(256), c1);
  std::printf("collector: %zu records, total %.6f = %.6f + %.6f\n", collector.records().size(),
              collector.total(), router.aux_loss(c0), second.aux_loss(c1));
  return std::abs(collector.total() - router.aux_loss(c0) - second.aux_loss(c1)) < 1e-12 ? 0 : 1;
}
