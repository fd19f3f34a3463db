// pemoe demo: fit a LoRA adapter on a frozen linear layer to a low-rank change of its weight.
//
// A "pretrained" layer W0 (512 -> 512) is frozen. The task is the layer W0 + Δ, with Δ of rank 4.
// A rank-8 LoRA adapter learns Δ from (x, y) pairs alone with AdamW on the mean squared error.
// At the end s·B·A should equal Δ: the program prints how close it got.
//
//   ./build/examples/pemoe_lora_demo [steps]
#include <pemoe/pemoe.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "plot/plot.hpp"  // pemoe_plot (tools/plot): CSV + PNG

using namespace pemoe;

int main(int argc, char** argv) {
  // ---- 1. configuration --------------------------------------------------------------------
  const Index d = 512, true_rank = 4, tokens = 256;
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  if (steps <= 0) {
    std::fprintf(stderr, "usage: %s [steps > 0]\n", argv[0]);
    return 2;
  }
  Rng rng(2024);

  // ---- 2. a frozen layer wrapped in LoRA (r = 8, alpha = 16: scale 2) ------------------------
  ParamStore<float> store;
  LoraConfig lora_config;
  lora_config.r = 8;
  lora_config.alpha = 16;
  LoRA<float> layer({d, d, /*bias=*/true}, lora_config);
  layer.register_params(store, "layer", rng);
  std::printf("pemoe %s demo: LoRA r=%ld on a frozen %ldx%ld linear layer\n", version_string,
              (long)lora_config.r, (long)d, (long)d);
  std::printf("parameters: %ld total, %ld trainable (%.2f%%)\n", (long)store.num_values(),
              (long)store.num_trainable(),
              100.0 * double(store.num_trainable()) / double(store.num_values()));

  // ---- 3. the task: y = x (W0 + Δ)ᵀ + b, Δ = U Vᵀ of rank 4 --------------------------------
  Matrix<float> U(d, true_rank), V(d, true_rank);
  rng.fill_normal(U.data(), U.size(), 0.0, 0.05);
  rng.fill_normal(V.data(), V.size(), 0.0, 0.05);
  const Matrix<float> delta = U * V.transpose();  // (d_out, d_in)
  const Matrix<float> w_target = Matrix<float>(layer.base().weight()) + delta;

  // ---- 4. train with AdamW on the mean squared error ------------------------------------------
  AdamWConfig opt_config;
  opt_config.lr = 3e-3;
  opt_config.weight_decay = 0.0;
  AdamW<float> optimizer(opt_config);
  Matrix<float> x(tokens, d), y(tokens, d), target(tokens, d), dy(tokens, d);
  LoRA<float>::Cache cache;
  layer.set_training(true);
  double first_loss = 0, loss = 0;
  plot::PlotSeries loss_curve{"train loss", {}, {}};
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 1; step <= steps; ++step) {
    rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
    target = x * w_target.transpose();
    target.rowwise() += layer.base().bias().row(0);
    layer.forward(x, y, cache);
    dy = y - target;
    loss = double(dy.squaredNorm()) / double(dy.size());
    if (step == 1) first_loss = loss;
    loss_curve.x.push_back(step);
    loss_curve.y.push_back(loss);
    dy *= 2.0f / float(dy.size());  // d(mean squared error)/dy
    store.zero_grad();
    layer.backward(x, cache, dy);
    optimizer.step(store);
    if (step % 25 == 0 || step == 1 || step == steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tok_s = double(step) * double(tokens) / secs;
      const double eta = secs / step * (steps - step);
      std::printf("step %4d/%d  loss %.3e  %8.0f tokens/s  ETA %5.1fs\n", step, steps, loss, tok_s, eta);
      std::fflush(stdout);
    }
  }

  // ---- 5. how close is s·B·A to Δ? ----------------------------------------------------------------
  const double rel_err = double((layer.delta_weight() - delta).norm() / delta.norm());
  std::printf("loss %.3e -> %.3e; ||s·B·A - Δ||/||Δ|| = %.2e\n", first_loss, loss, rel_err);
  plot::LinePlotOptions loss_plot;
  loss_plot.title = "LoRA demo: training loss";
  loss_plot.x_label = "step";
  loss_plot.y_label = "mean squared error";
  loss_plot.log_y = true;
  const plot::PlotFiles files = plot::plot_lines("lora_demo_loss", {loss_curve}, loss_plot);
  std::printf("loss curve written to %s and %s\n", files.csv.c_str(), files.png.c_str());
  layer.merge();  // fold the adapter into the weight for inference
  std::printf("merged: ||W - (W0 + Δ)||/||Δ|| = %.2e\n",
              double((Matrix<float>(layer.base().weight()) - w_target).norm() / delta.norm()));
  return rel_err < 0.05 ? 0 : 1;
}
