// Uses the installed pemoe: a LoRA layer's forward pass must equal its frozen base at initialisation.
#include <pemoe/pemoe.hpp>

#include <cstdio>

int main() {
  pemoe::ParamStore<float> store;
  pemoe::Rng rng(7);
  pemoe::LoRA<float> lora({16, 8, true}, pemoe::LoraConfig{});
  lora.register_params(store, "layer", rng);
  pemoe::Matrix<float> x = pemoe::Matrix<float>::Ones(4, 16), y(4, 8), y0(4, 8);
  pemoe::LoRA<float>::Cache cache;
  lora.forward(x, y, cache);
  pemoe::Linear<float>::Cache base_cache;
  lora.base().forward(x, y0, base_cache);
  std::printf("pemoe %s: %ld parameters, |y - y_base| = %g\n", pemoe::version_string,
              (long)store.num_values(), (double)(y - y0).norm());
  return (y - y0).norm() == 0.0f ? 0 : 1;
}
