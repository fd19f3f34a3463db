// PEFT adapter directories on T5 (include/pemoe/models/peft_dir.hpp, load_t5 in t5_hf.hpp) against Hugging
// Face PEFT itself (fixtures from tests/data/t5/make_peft_fixtures.py, on the v11 fixture model): a LoRA
// (q, v, o, wi_1; r 3, alpha 6) and an (IA)³ adapter (k, v, wo; wo scaled on its input) that PEFT wrote are
// loaded; logits, loss and every adapter gradient equal PEFT's float64 model; saved back, the directory
// holds PEFT's tensors (names, shapes, values) and PEFT's config keys.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/t5_hf.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace t5_peft_test {

const std::string kBase = PEMOE_TEST_DATA_DIR "/t5/v11";
const std::string kPeft = PEMOE_TEST_DATA_DIR "/t5/peft/";

// worst |got − want| / max|want| over a tensor
template <class T>
double scaled_err(const T* got, const std::vector<double>& want) {
  double mx = 0, worst = 0;
  for (double v : want) mx = std::max(mx, std::abs(v));
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  return worst / mx;
}

void check_adapter(const std::string& name, AdapterKind kind) {
  ParamStore<double> s;
  Rng rng(0);
  PeftAdapterConfig a;
  auto m = load_t5<double>(kBase, s, rng, kPeft + name, &a);
  CHECK(a.spec.kind == kind);
  const auto batch = SafetensorsFile::load(kBase + "/batch.safetensors");
  const Index B = batch.info("input_ids").shape[0], Ts = batch.info("input_ids").shape[1],
              Tt = batch.info("labels").shape[1];
  m->set_training(false);
  m->set_batch(B, Ts, Tt, batch.to_vector<std::int64_t>("attention_mask"),
               batch.to_vector<std::int64_t>("decoder_attention_mask"));
  T5<double>::Cache c;
  const double loss =
      m->forward(batch.to_vector<std::int64_t>("input_ids"), batch.to_vector<std::int64_t>("labels"), c);
  const auto exp = SafetensorsFile::load(kPeft + "expected_" + name + ".safetensors");
  const double want_loss = exp.to_vector<double>("loss")[0];
  CHECK(std::abs(loss - want_loss) <= 1e-12 * std::abs(want_loss));
  CHECK(scaled_err(c.logits.data(), exp.to_vector<double>("logits")) <= 1e-12);
  s.zero_grad();
  m->backward(c);
  std::size_t n_exp = 0, n_checked = 0;
  for (const auto& key : exp.names())
    if (key.rfind("grad.", 0) == 0) ++n_exp;
  for (const auto& e : s.entries()) {
    if (!e.trainable) continue;
    INFO(e.name);
    const std::string key = "grad." + peft_key(e.name);
    REQUIRE(exp.contains(key));
    CHECK(scaled_err(s.grad(s.id(e.name)), exp.to_vector<double>(key)) <= 1e-10);
    ++n_checked;
  }
  CHECK(n_checked == n_exp);  // every PEFT parameter is here, and nothing more trains
  CHECK(n_checked >= 20);

  // saved back: PEFT's tensors exactly (float32 values, PEFT's shapes) and PEFT's config
  const std::string out = testing::scratch_dir("t5_peft_" + name);
  save_peft_adapter(*m, a, out, kBase);
  const auto theirs = SafetensorsFile::load(kPeft + name + "/adapter_model.safetensors");
  const auto ours = SafetensorsFile::load(out + "/adapter_model.safetensors");
  const auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  CHECK(sorted(ours.names()) == sorted(theirs.names()));
  for (const auto& key : theirs.names()) {
    INFO(key);
    CHECK(ours.info(key).shape == theirs.info(key).shape);
    CHECK(ours.to_vector<float>(key) == theirs.to_vector<float>(key));
  }
  const auto cfg = detail::read_json_file(out + "/adapter_config.json");
  const auto want = detail::read_json_file(kPeft + name + "/adapter_config.json");
  for (const char* k : {"peft_type", "task_type", "target_modules", "fan_in_fan_out"}) {
    INFO(k);
    CHECK(cfg.at(k) == want.at(k));
  }
  if (kind == AdapterKind::ia3) CHECK(cfg.at("feedforward_modules") == want.at("feedforward_modules"));
  if (kind == AdapterKind::lora)
    for (const char* k : {"r", "lora_alpha"}) CHECK(cfg.at(k) == want.at(k));
  // and it loads again to the same model
  ParamStore<double> s2;
  Rng rng2(5);
  auto m2 = load_t5<double>(kBase, s2, rng2, out);
  CHECK(s2.values() == s.values());
}

TEST_CASE("T5 PEFT LoRA directory: PEFT's logits, loss and adapter gradients, saved back as PEFT's", "[t5]") {
  check_adapter("lora", AdapterKind::lora);
}

TEST_CASE("T5 PEFT IA3 directory (k, v, wo input): PEFT's logits, loss and gradients, saved back", "[t5]") {
  check_adapter("ia3", AdapterKind::ia3);
}

TEST_CASE("T5 PEFT directory errors name the file", "[t5]") {
  ParamStore<double> s;
  Rng rng(0);
  CHECK_THROWS_AS(load_t5<double>(kBase, s, rng, kPeft + "missing"), IoError);
  // an adapter for other modules: its tensors do not match the sites it selects
  const std::string bad = testing::scratch_dir("t5_peft_bad");
  std::filesystem::copy(
      kPeft + "ia3", bad,
      std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing);
  auto cfg = detail::read_json_file(bad + "/adapter_config.json");
  cfg["target_modules"] = {"q", "v"};
  detail::write_json_file(bad + "/adapter_config.json", cfg);
  ParamStore<double> s2;
  CHECK_THROWS_AS(load_t5<double>(kBase, s2, rng, bad), IoError);
}

}  // namespace t5_peft_test
