// Guide docs/guides/mov.md: MoV, a mixture of (IA)³ vectors merged per token by a router, against a single
// (IA)³ vector on a task where two kinds of tokens need two different rescalings.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/ia3.hpp>
#include <pemoe/adapters/mov.hpp>
#include <pemoe/train/adamw.hpp>

#include <cstdio>
#include <string>

using namespace pemoe;

static std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

// Tokens of kind 0 have x[:, 0] = +2 and want their outputs scaled by l0, tokens of kind 1 have x[:, 0] = -2
// and want l1.
struct Task {
  RowVector<double> l0, l1;
  void batch(Rng& rng, const Linear<double>& base, Matrix<double>& x, Matrix<double>& target) const {
    rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
    for (Index t = 0; t < x.rows(); ++t) x(t, 0) = t % 2 == 0 ? 2.0 : -2.0;
    target = x * Matrix<double>(base.weight()).transpose();
    target.rowwise() += base.bias().row(0);
    for (Index t = 0; t < x.rows(); ++t) target.row(t).array() *= (t % 2 == 0 ? l0 : l1).array();
  }
};

template <class Layer>
double train(Layer& layer, ParamStore<double>& store, const Task& task, Rng rng) {
  AdamWConfig cfg;
  cfg.lr = 3e-2;
  cfg.weight_decay = 0.0;
  AdamW<double> opt(cfg);
  Matrix<double> x(64, 16), y(64, 32), target(64, 32), dy(64, 32);
  typename Layer::Cache cache;
  double loss = 0;
  for (int step = 0; step < 400; ++step) {
    task.batch(rng, layer.base(), x, target);
    layer.forward(x, y, cache);
    dy = y - target;
    loss = dy.squaredNorm() / double(dy.size());
    dy *= 2.0 / double(dy.size());
    store.zero_grad();
    layer.backward(x, cache, dy);
    opt.step(store);
  }
  return loss;
}

int main() {
  Rng rng(5);
  Task task{RowVector<double>(32), RowVector<double>(32)};
  rng.fill_uniform(task.l0.data(), 32, 0.5, 1.5);
  rng.fill_uniform(task.l1.data(), 32, 0.5, 1.5);

  // MoV on a frozen 16 -> 32 linear: E = 4 vectors, a soft router reading the layer's input x.
  ParamStore<double> store;
  MoVConfig cfg = MoVConfig::for_ai(/*n_experts=*/4);
  cfg.router_input = RouterInput::layer_input;
  MoV<double> mov({16, 32, true}, cfg);
  mov.register_params(store, "mlp.c_fc", rng);
  for (const auto& e : store.entries())
    std::printf("%-24s %-8s %s\n", e.name.c_str(), shape_str(e.shape).c_str(),
                e.trainable ? "trainable" : "frozen");

  // The vectors start at ones: whatever the router says, MoV starts as the frozen layer.
  Matrix<double> x(64, 16), y(64, 32), y_base(64, 32), target(64, 32);
  task.batch(rng, mov.base(), x, target);
  MoV<double>::Cache cache;
  mov.forward(x, y, cache);
  Linear<double>::Cache base_cache;
  mov.base().forward(x, y_base, base_cache);
  const double row_sum_err = (cache.gates.rowwise().sum().array() - 1.0).abs().maxCoeff();
  std::printf("gates (64, 4), rows sum to 1: %s; at init y == frozen layer: %s\n",
              row_sum_err < 1e-12 ? "yes" : "no", (y - y_base).cwiseAbs().maxCoeff() < 1e-12 ? "yes" : "no");

  // Train MoV and, for comparison, a single (IA)³ vector on the same task and batches.
  const double mov_loss = train(mov, store, task, Rng(7));
  ParamStore<double> ia3_store;
  IA3<double> ia3({16, 32, true});
  Rng rng_ia3(5);
  ia3.register_params(ia3_store, "mlp.c_fc", rng_ia3);  // then the same frozen weights as MoV's base:
  ia3_store.set("mlp.c_fc.weight", Matrix<double>(mov.base().weight()));
  ia3_store.set("mlp.c_fc.bias", Matrix<double>(mov.base().bias()));
  const double ia3_loss = train(ia3, ia3_store, task, Rng(7));
  std::printf("after 400 steps: MoV (E=4) loss %.6f, IA3 loss %.6f\n", mov_loss, ia3_loss);

  // Which expert mixture does each kind of token get? (Mean gate per expert over the tokens of a kind.)
  task.batch(rng, mov.base(), x, target);
  mov.forward(x, y, cache);
  for (int kind = 0; kind < 2; ++kind) {
    std::printf("mean gates, tokens of kind %d:", kind);
    for (Index e = 0; e < 4; ++e) {
      double g = 0;
      for (Index t = kind; t < 64; t += 2) g += cache.gates(t, e);
      std::printf(" %.2f", g / 32);
    }
    std::printf("\n");
  }
  return mov_loss < 0.1 * ia3_loss ? 0 : 1;
}
