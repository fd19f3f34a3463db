// Guide docs/guides/ia3.md: (IA)³ rescales a frozen layer's output (or input) by one learned vector.
// ctest runs this program and compares its output with the guide.
#include <pemoe/adapters/ia3.hpp>
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
  ParamStore<double> store;
  Rng rng(3);
  // Output placement (PEFT's default): y = (x Wᵀ + b) ⊙ l, l ∈ R^{d_out}, l initialised to ones.
  IA3<double> attn({/*d_in=*/24, /*d_out=*/16, /*bias=*/true});
  attn.register_params(store, "h.0.attn.c_attn", rng);
  // Feed-forward placement (PEFT's feedforward_modules): y = (x ⊙ l) Wᵀ + b, l ∈ R^{d_in}.
  IA3Config ff_cfg;
  ff_cfg.feedforward = true;
  IA3<double> mlp({/*d_in=*/16, /*d_out=*/24, /*bias=*/true}, ff_cfg);
  mlp.register_params(store, "h.0.mlp.c_proj", rng);
  for (const auto& e : store.entries())
    std::printf("%-26s %-8s %s\n", e.name.c_str(), shape_str(e.shape).c_str(),
                e.trainable ? "trainable" : "frozen");
  std::printf("trainable: %ld of %ld values\n", long(store.num_trainable()), long(store.num_values()));

  // Learn a target rescaling l* of the attention layer's 16 outputs from (x, y) pairs.
  RowVector<double> l_star(16);
  rng.fill_uniform(l_star.data(), 16, 0.5, 1.5);
  AdamWConfig opt_cfg;
  opt_cfg.lr = 5e-2;
  opt_cfg.weight_decay = 0.0;
  AdamW<double> opt(opt_cfg);
  Matrix<double> x(32, 24), y(32, 16), h(32, 16), target(32, 16), dy(32, 16);
  IA3<double>::Cache cache;
  Linear<double>::Cache base_cache;
  for (int step = 0; step <= 200; ++step) {
    rng.fill_normal(x.data(), x.size(), 0.0, 1.0);
    attn.base().forward(x, h, base_cache);
    target = (h.array().rowwise() * l_star.array()).matrix();
    attn.forward(x, y, cache);
    dy = y - target;
    const double loss = dy.squaredNorm() / double(dy.size());
    if (step % 50 == 0) std::printf("step %3d  loss %.6f\n", step, loss);
    dy *= 2.0 / double(dy.size());
    store.zero_grad();
    attn.backward(x, cache, dy);
    opt.step(store);
  }
  const double err = (attn.scale() - l_star).norm() / l_star.norm();
  std::printf("|l - l*| / |l*| = %.4f\n", err);
  return err < 0.01 ? 0 : 1;
}
