// Conan's test_package: a LoRA layer from the packaged headers must equal its frozen base at initialisation
// (B = 0), and the package's compile definitions must match its options.
#include <pemoe/adapters/lora.hpp>
#include <pemoe/version.hpp>

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
  const double diff = static_cast<double>((y - y0).norm());
#ifdef PEMOE_WITH_OPENMP
  const char* openmp = "on";
#else
  const char* openmp = "off";
#endif
#ifdef PEMOE_WITH_DNNL
  const char* dnnl = "on";
#else
  const char* dnnl = "off";
#endif
  std::printf("pemoe %s (OpenMP %s, oneDNN %s): %ld parameters, |y - y_base| = %g\n", pemoe::version_string,
              openmp, dnnl, static_cast<long>(store.num_values()), diff);
  return diff == 0.0 ? 0 : 1;
}
