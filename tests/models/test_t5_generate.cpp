// T5 decoding (include/pemoe/models/t5_generate.hpp): a cached step equals the last row of a full forward
// (plain and with MoV at its reference placement), cached and uncached generation give the same tokens
// (greedy and sampled), greedy decoding equals Hugging Face's model.generate on the v11 and orig fixture
// models (tests/data/t5/make_generate_fixture.py: sources of different lengths), and misuse is a named error.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pemoe/models/t5_generate.hpp"
#include "pemoe/models/t5_hf.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace t5_generate_test {

const std::string kT5 = PEMOE_TEST_DATA_DIR "/t5/";

std::vector<std::vector<std::int64_t>> fixture_sources(const nlohmann::json& j) {
  return j.at("sources").get<std::vector<std::vector<std::int64_t>>>();
}

// The step logits of T5Decoder against the full forward's rows at every position, sources of two lengths.
double step_vs_forward(T5<double>& m, const std::vector<std::vector<std::int64_t>>& sources,
                       const std::vector<std::int64_t>& dec_tokens /* per step, same for every sequence */) {
  const Index B = Index(sources.size()), steps = Index(dec_tokens.size()), V = m.config().vocab_size;
  std::vector<Matrix<double>> cached;
  {
    T5Decoder<double> dec(m, sources, steps);
    for (Index s = 0; s < steps; ++s)
      cached.push_back(dec.step(std::vector<std::int64_t>(std::size_t(B), dec_tokens[std::size_t(s)])));
  }
  Index longest = 0;
  for (const auto& src : sources) longest = std::max(longest, Index(src.size()));
  std::vector<std::int64_t> ids, mask, flat;
  for (const auto& src : sources)
    for (Index t = 0; t < longest; ++t) {
      ids.push_back(t < Index(src.size()) ? src[std::size_t(t)] : 0);
      mask.push_back(t < Index(src.size()) ? 1 : 0);
    }
  for (Index b = 0; b < B; ++b) flat.insert(flat.end(), dec_tokens.begin(), dec_tokens.end());
  m.set_batch(B, longest, steps, mask);
  T5<double>::Cache c;
  m.forward(ids, flat, {}, c);
  double worst = 0;
  for (Index s = 0; s < steps; ++s)
    for (Index b = 0; b < B; ++b)
      for (Index v = 0; v < V; ++v)
        worst = std::max(worst, std::abs(cached[std::size_t(s)](b, v) - c.logits(b * steps + s, v)));
  return worst;
}

TEST_CASE("T5 decoding: a cached step equals the full forward, plain and with MoV", "[t5]") {
  const nlohmann::json j = detail::read_json_file(kT5 + "v11/generate.json");
  const auto sources = fixture_sources(j);
  for (bool mov : {false, true}) {
    CAPTURE(mov);
    T5<double> m(read_t5_config(kT5 + "v11"));
    if (mov) m.inject_mov(MoVConfig::for_ai(3));
    ParamStore<double> s;
    Rng rng(0);
    m.register_params(s, rng);
    load_t5_weights(m, kT5 + "v11");
    Rng vec(4);
    for (const auto& e : s.entries())
      if (e.trainable && mov) vec.split(e.name).fill_normal(s.value(s.id(e.name)), e.size, 1.0, 0.5);
    m.set_training(false);
    CHECK(step_vs_forward(m, sources, {0, 18, 2, 30, 7}) < 1e-10);
    GenerateOptions o;
    o.max_new_tokens = 7;
    const auto cached = generate(m, sources, o);
    o.use_cache = false;
    CHECK(generate(m, sources, o) == cached);
    o.do_sample = true;
    o.temperature = 0.9;
    o.top_k = 20;
    o.seed = 3;
    const auto sampled = generate(m, sources, o);
    o.use_cache = true;
    CHECK(generate(m, sources, o) == sampled);
    CHECK(sampled != cached);  // 7 tokens of 2 sequences: sampling is not the argmax everywhere
  }
}

TEST_CASE("T5 greedy decoding equals Hugging Face's generate (v11 untied, orig tied and rescaled)", "[t5]") {
  for (const char* layout : {"v11", "orig"}) {
    CAPTURE(layout);
    const nlohmann::json j = detail::read_json_file(kT5 + layout + "/generate.json");
    ParamStore<double> s;
    Rng rng(0);
    auto m = load_t5<double>(kT5 + layout, s, rng);
    m->set_training(false);
    GenerateOptions o;
    o.max_new_tokens = j.at("max_new_tokens").get<Index>();
    const auto got = generate(*m, fixture_sources(j), o);
    const auto hf = j.at("sequences").get<std::vector<std::vector<std::int64_t>>>();
    REQUIRE(got.size() == hf.size());
    const std::int64_t eos = j.at("eos_token_id").get<std::int64_t>();
    for (std::size_t b = 0; b < hf.size(); ++b) {
      CAPTURE(b);
      std::vector<std::int64_t> want;  // HF: the start token, the ids, pad after eos
      for (std::size_t i = 1; i < hf[b].size(); ++i) {
        want.push_back(hf[b][i]);
        if (hf[b][i] == eos) break;
      }
      CHECK(got[b] == want);
    }
    // float: the same tokens
    ParamStore<float> sf;
    auto mf = load_t5<float>(kT5 + layout, sf, rng);
    mf->set_training(false);
    CHECK(generate(*mf, fixture_sources(j), o) == got);
  }
}

TEST_CASE("T5 decoding errors are named, and the model's layout is put back", "[t5]") {
  ParamStore<double> s;
  Rng rng(0);
  auto m = load_t5<double>(kT5 + "v11", s, rng);
  const std::vector<std::vector<std::int64_t>> src{{3, 4, 5}};
  m->set_training(true);
  CHECK_THROWS_AS(T5Decoder<double>(*m, src, 4), ConfigError);  // training mode
  m->set_training(false);
  CHECK_THROWS_AS(T5Decoder<double>(*m, {}, 4), ConfigError);
  CHECK_THROWS_AS(T5Decoder<double>(*m, {{}}, 4), ConfigError);
  CHECK_THROWS_AS(T5Decoder<double>(*m, {{3, 999}}, 4), ShapeError);
  m->set_batch(2, 5, 3, std::vector<std::int64_t>(10, 1));
  {
    T5Decoder<double> dec(*m, src, 2);
    dec.step({0});
    dec.step({7});
    CHECK_THROWS_AS(dec.step({7}), ConfigError);  // the cache is full
    CHECK_THROWS_AS(dec.step({7, 8}), ShapeError);
  }
  const auto l = m->batch_layout();
  CHECK(l.batch == 2);
  CHECK(l.src_len == 5);
  CHECK(l.tgt_len == 3);
}

}  // namespace t5_generate_test
