// Guide docs/guides/lora.md: a LoRA adapter on a frozen linear layer learns a low-rank change of its weight.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/lora.hpp>
#include <pemoe/train/adamw.hpp>

#include <cstdio>
#include <string>

using namespace pemoe;

static std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

int main() {
  // A frozen "pretrained" layer (32 -> 32) wrapped in a rank-4 LoRA: y = x Wᵀ + b + (alpha/r)·(x Aᵀ) Bᵀ.
  ParamStore<double> store;
  Rng rng(1);
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;  // scaling alpha/r = 2
  LoRA<double> layer({/*d_in=*/32, /*d_out=*/32, /*bias=*/true}, cfg);
  layer.register_params(store, "mlp.c_fc", rng);
  for (const auto& e : store.entries())
    std::printf("%-24s %-8s %s\n", e.name.c_str(), shape_str(e.shape).c_str(),
                e.trainable ? "trainable" : "frozen");
  std::printf("trainable: %ld of %ld values\n", long(store.num_trainable()), long(store.num_values()));

  // B starts at zero: the adapter is the identity, y equals the frozen layer's output.
  Matrix<double> x(64, 32), y(64, 32), y_base(64, 32);
  rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
  LoRA<double>::Cache cache;
  layer.forward(x, y, cache);
  Linear<double>::Cache base_cache;
  layer.base().forward(x, y_base, base_cache);
  std::printf("at init, y == frozen layer: %s\n", y == y_base ? "yes" : "no");

  // The task: the same layer with a rank-2 change Δ of its weight. AdamW on the mean squared error.
  Matrix<double> u(32, 2), v(32, 2);
  rng.fill_normal(u.data(), u.size(), 0.0, 0.2);
  rng.fill_normal(v.data(), v.size(), 0.0, 0.2);
  const Matrix<double> delta = u * v.transpose();
  const Matrix<double> w_task = Matrix<double>(layer.base().weight()) + delta;
  AdamWConfig opt_cfg;
  opt_cfg.lr = 1e-2;
  opt_cfg.weight_decay = 0.0;
  AdamW<double> opt(opt_cfg);
  Matrix<double> target(64, 32), dy(64, 32);
  layer.set_training(true);
  for (int step = 0; step <= 300; ++step) {
    rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
    target = x * w_task.transpose();
    target.rowwise() += layer.base().bias().row(0);
    layer.forward(x, y, cache);
    dy = y - target;
    const double loss = dy.squaredNorm() / double(dy.size());
    if (step % 100 == 0) std::printf("step %3d  loss %.6f\n", step, loss);
    dy *= 2.0 / double(dy.size());  // d(mean squared error)/dy
    store.zero_grad();
    layer.backward(x, cache, dy);  // adds dA, dB; the base weight is frozen
    opt.step(store);
  }
  const double err = (layer.delta_weight() - delta).norm() / delta.norm();
  std::printf("|s·B·A - Δ| / |Δ| = %.4f\n", err);

  // For inference, fold s·B·A into the weight: forward is then a single GEMM with the same result.
  layer.set_training(false);
  layer.forward(x, y, cache);
  const Matrix<double> y_adapter = y;
  layer.merge();
  layer.forward(x, y, cache);
  const double merge_err = (y - y_adapter).cwiseAbs().maxCoeff();
  std::printf("merged: max |y - y_adapter| < 1e-12: %s\n", merge_err < 1e-12 ? "yes" : "no");
  layer.unmerge();
  return err < 0.05 && merge_err < 1e-12 ? 0 : 1;
}
