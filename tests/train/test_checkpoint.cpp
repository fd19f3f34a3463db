// Checkpoints: resume is bit-identical (2N steps == N + save + load + N, with dropout, router jitter and
// AdamW / Adafactor / SGD state), a tensor file that does not belong to its JSON is refused.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include "pemoe/adapters/molora.hpp"
#include "pemoe/train/checkpoint.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

struct Run {
  ParamStore<float> store;
  std::unique_ptr<MoLoRA<float>> layer;
  MoLoRA<float>::Cache cache;

  Run() {
    LoraExpertsConfig c = LoraExpertsConfig::for_ai(4, 4);
    c.dropout = 0.1;
    c.router.jitter = 0.05;
    c.base_trainable = true;
    layer = std::make_unique<MoLoRA<float>>(LinearConfig{24, 20, true}, c);
    Rng rng(7);
    layer->register_params(store, "h.0.mlp.c_fc", rng);
    layer->set_training(true);
  }
  // One training step on the batch of step `k` (a pure function of k).
  template <class Opt>
  void step(Opt& opt, long k) {
    const Matrix<float> x = testing::random_matrix<float>(16, 24, 1000 + std::uint64_t(k));
    Matrix<float> y(16, 20);
    layer->forward(x, y, cache);
    const Matrix<float> dy = (2.0f / float(y.size())) * y;
    store.zero_grad();
    layer->backward(x, cache, dy);
    opt.step(store);
  }
  void save_rng(Checkpoint& c) const {
    c.put("rng.dropout", std::vector<std::uint64_t>{layer->dropout().call_counter()});
    c.put("rng.router", std::vector<std::uint64_t>{layer->router().call_counter()});
  }
  void load_rng(const Checkpoint& c) {
    layer->dropout().set_call_counter(c.get<std::uint64_t>("rng.dropout").at(0));
    layer->router().set_call_counter(c.get<std::uint64_t>("rng.router").at(0));
  }
};

template <class Opt, class Save, class Load>
void resume_is_bit_identical(const std::function<Opt()>& make_opt, Save save_opt, Load load_opt) {
  const long n = 6;
  const std::string dir = (std::filesystem::temp_directory_path() / "pemoe_test_checkpoint").string();
  std::filesystem::remove_all(dir);
  Run straight;
  Opt o1 = make_opt();
  for (long k = 0; k < 2 * n; ++k) straight.step(o1, k);

  Run first;
  Opt o2 = make_opt();
  for (long k = 0; k < n; ++k) first.step(o2, k);
  Checkpoint c;
  save_params(c, first.store);
  save_opt(c, o2, first.store);
  first.save_rng(c);
  c.meta()["step"] = n;
  c.save(dir);

  Run resumed;  // fresh objects, as after a restart
  Opt o3 = make_opt();
  const Checkpoint l = Checkpoint::load(dir);
  load_params(l, resumed.store);
  load_opt(l, o3, resumed.store);
  resumed.load_rng(l);
  for (long k = l.meta()["step"].get<long>(); k < 2 * n; ++k) resumed.step(o3, k);

  REQUIRE(straight.store.values().size() == resumed.store.values().size());
  CHECK(std::memcmp(straight.store.values().data(), resumed.store.values().data(),
                    straight.store.values().size() * sizeof(float)) == 0);
  // and the run did move the parameters (the comparison is not between two untouched stores)
  Run untouched;
  CHECK(std::memcmp(untouched.store.values().data(), resumed.store.values().data(),
                    untouched.store.values().size() * sizeof(float)) != 0);
  std::filesystem::remove_all(dir);
}

}  // namespace

TEST_CASE("Checkpoint resume is bit-identical with AdamW, Adafactor and SGD (dropout and jitter on)") {
  SECTION("AdamW") {
    resume_is_bit_identical<AdamW<float>>(
        [] { return AdamW<float>(AdamWConfig{}); },
        [](Checkpoint& c, const AdamW<float>& o, const ParamStore<float>& s) { save_optimizer(c, o, s); },
        [](const Checkpoint& c, AdamW<float>& o, const ParamStore<float>& s) { load_optimizer(c, o, s); });
  }
  SECTION("Adafactor") {
    resume_is_bit_identical<Adafactor<float>>(
        [] {
          AdafactorConfig a = AdafactorConfig::constant(1e-2);
          a.beta1 = 0.9;
          return Adafactor<float>(a);
        },
        [](Checkpoint& c, const Adafactor<float>& o, const ParamStore<float>&) { save_optimizer(c, o); },
        [](const Checkpoint& c, Adafactor<float>& o, const ParamStore<float>&) { load_optimizer(c, o); });
  }
  SECTION("SGD") {
    resume_is_bit_identical<SGD<float>>(
        [] {
          SGDConfig s;
          s.lr = 0.05;
          s.momentum = 0.9;
          return SGD<float>(s);
        },
        [](Checkpoint& c, const SGD<float>& o, const ParamStore<float>&) { save_optimizer(c, o); },
        [](const Checkpoint& c, SGD<float>& o, const ParamStore<float>&) { load_optimizer(c, o); });
  }
}

TEST_CASE("Checkpoint refuses a tensor file that does not belong to its JSON, and names missing files") {
  const std::string dir = (std::filesystem::temp_directory_path() / "pemoe_test_checkpoint_bad").string();
  std::filesystem::remove_all(dir);
  Checkpoint c;
  c.put("x", std::vector<float>{1, 2, 3});
  c.meta()["step"] = 3;
  c.save(dir);
  CHECK(Checkpoint::load(dir).get<float>("x") == std::vector<float>{1, 2, 3});
  CHECK(Checkpoint::load(dir).meta()["step"] == 3);
  Checkpoint other;
  other.put("x", std::vector<float>{1, 2, 4});
  other.save(dir + "_other");
  std::filesystem::copy_file(dir + "_other/checkpoint.safetensors", dir + "/checkpoint.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_THROWS_WITH(Checkpoint::load(dir), Catch::Contains("does not belong"));
  CHECK_THROWS_AS(Checkpoint::load(dir + "_missing"), IoError);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir + "_other");
}
