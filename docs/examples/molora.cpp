// Guide docs/guides/molora.md: MoLoRA, a soft mixture of LoRA experts, against one LoRA of the same rank on a
// task where two kinds of tokens need two different low-rank updates.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/lora.hpp>
#include <pemoe/adapters/molora.hpp>
#include <pemoe/train/adamw.hpp>

#include <cstdio>
#include <string>

using namespace pemoe;

static std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

// Tokens of kind 0 (x[:, 0] = +2) follow W + Δ0, tokens of kind 1 (x[:, 0] = -2) follow W + Δ1; Δ0, Δ1
// rank 2.
struct Task {
  Matrix<double> d0, d1;
  void batch(Rng& rng, const Linear<double>& base, Matrix<double>& x, Matrix<double>& target) const {
    rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
    for (Index t = 0; t < x.rows(); ++t) x(t, 0) = t % 2 == 0 ? 2.0 : -2.0;
    target = x * Matrix<double>(base.weight()).transpose();
    target.rowwise() += base.bias().row(0);
    for (Index t = 0; t < x.rows(); ++t) target.row(t) += x.row(t) * (t % 2 == 0 ? d0 : d1).transpose();
  }
};

template <class Layer>
double train(Layer& layer, ParamStore<double>& store, const Task& task, Rng rng) {
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.0;
  AdamW<double> opt(cfg);
  Matrix<double> x(64, 24), y(64, 24), target(64, 24), dy(64, 24);
  typename Layer::Cache cache;
  double loss = 0;
  for (int step = 0; step < 500; ++step) {
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
  Rng rng(11);
  Task task;
  for (Matrix<double>* d : {&task.d0, &task.d1}) {
    Matrix<double> u(24, 2), v(24, 2);
    rng.fill_normal(u.data(), u.size(), 0.0, 0.3);
    rng.fill_normal(v.data(), v.size(), 0.0, 0.3);
    *d = u * v.transpose();
  }

  // The for-ai preset: E = 4 experts of rank 2, A ~ N(0, 0.02), B = 0, alpha 16, a soft router on x.
  ParamStore<double> store;
  MoLoRA<double> molora({24, 24, true}, LoraExpertsConfig::for_ai(/*n_experts=*/4, /*r=*/2));
  molora.register_params(store, "attn.c_attn", rng);
  for (const auto& e : store.entries())
    std::printf("%-26s %-11s %s\n", e.name.c_str(), shape_str(e.shape).c_str(),
                e.trainable ? "trainable" : "frozen");

  // With B_e = 0 the layer starts as the frozen linear. With any B_e it is s·Σ_e g_e (x A_eᵀ) B_eᵀ on top:
  // check that against the experts one by one, after giving B random values.
  Matrix<double> x(64, 24), y(64, 24), y_base(64, 24), target(64, 24);
  task.batch(rng, molora.base(), x, target);
  MoLoRA<double>::Cache cache;
  molora.forward(x, y, cache);
  Linear<double>::Cache base_cache;
  molora.base().forward(x, y_base, base_cache);
  std::printf("at init y == frozen layer: %s\n", (y - y_base).cwiseAbs().maxCoeff() == 0.0 ? "yes" : "no");
  auto b = molora.experts().B_stack();
  rng.fill_normal(b.data(), b.size(), 0.0, 0.1);
  molora.forward(x, y, cache);
  Matrix<double> by_hand = y_base;
  for (Index e = 0; e < 4; ++e) {
    const Matrix<double> h = x * molora.experts().A(e).transpose();  // (N, r)
    by_hand += molora.scaling() * (cache.gates.col(e).asDiagonal() * h) * molora.experts().B(e).transpose();
  }
  std::printf("y == x Wᵀ + b + s·Σ_e g_e (x A_eᵀ) B_eᵀ: %s\n",
              (y - by_hand).cwiseAbs().maxCoeff() < 1e-12 ? "yes" : "no");
  b.setZero();

  // Train MoLoRA (4 experts of rank 2) and a single LoRA of rank 2 on the same batches.
  const double molora_loss = train(molora, store, task, Rng(13));
  ParamStore<double> lora_store;
  LoraConfig lcfg;
  lcfg.r = 2;
  lcfg.alpha = 16;
  LoRA<double> lora({24, 24, true}, lcfg);
  Rng lora_rng(11);
  lora.register_params(lora_store, "attn.c_attn", lora_rng);
  lora_store.set("attn.c_attn.weight", Matrix<double>(molora.base().weight()));  // the same frozen layer
  lora_store.set("attn.c_attn.bias", Matrix<double>(molora.base().bias()));
  const double lora_loss = train(lora, lora_store, task, Rng(13));
  std::printf("after 500 steps: MoLoRA (E=4, r=2) loss %.6f, LoRA (r=2) loss %.6f\n", molora_loss, lora_loss);
  std::printf("trainable values: MoLoRA %ld, LoRA %ld\n", long(store.num_trainable()),
              long(lora_store.num_trainable()));
  return molora_loss < 0.2 * lora_loss ? 0 : 1;
}
