// GPT-2 generation: the key/value-cache decoder against the full forward (logits at every step, plain, with
// a PEFT LoRA adapter, with a MoE adapter, left-padded batches), cached and uncached decoding giving the same
// tokens (greedy and sampled), Hugging Face's greedy `generate` token for token (tests/data/gpt2/*/
// generate.safetensors from make_fixtures.py), the sampling filters (temperature, top-k, top-p) and the
// option errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

const std::string kDir = PEMOE_TEST_DATA_DIR "/gpt2/";

using Seqs = std::vector<std::vector<std::int64_t>>;

// Rows of a (B, T) int64 tensor; with a mask, only the positions it marks 1.
Seqs rows_of(const SafetensorsFile& f, const std::string& name, const std::string& mask = "") {
  const auto& info = f.info(name);
  const auto v = f.to_vector<std::int64_t>(name);
  const auto m = mask.empty() ? std::vector<std::int64_t>(v.size(), 1) : f.to_vector<std::int64_t>(mask);
  Seqs out(std::size_t(info.shape[0]));
  for (std::size_t i = 0; i < v.size(); ++i)
    if (m[i]) out[i / std::size_t(info.shape[1])].push_back(v[i]);
  return out;
}

// The full forward's logits at the last position of one sequence (B = 1).
template <class T>
Matrix<T> last_logits(GPT2<T>& m, const std::vector<std::int64_t>& seq) {
  typename GPT2<T>::Cache c;
  m.set_batch(1, Index(seq.size()));
  m.forward(seq, {}, c);
  return c.logits.bottomRows(1);
}

// max |a − b| / max |b|.
template <class T>
double rel_diff(const Matrix<T>& a, const Matrix<T>& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / double(b.cwiseAbs().maxCoeff());
}

// Feeds `steps` tokens (a fixed pseudo-random walk) through a decoder and checks the logits of every sequence
// at every step against the full forward on that sequence alone.
template <class T>
void check_decoder_against_forward(GPT2<T>& m, const Seqs& prompts, Index steps, double tol) {
  const Index V = m.config().vocab_size;
  Index longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, Index(p.size()));
  GPT2Decoder<T> dec(m, longest + steps);
  Seqs seqs = prompts;
  Matrix<T> logits = dec.prefill(prompts);
  for (Index s = 0;; ++s) {
    REQUIRE(logits.rows() == Index(prompts.size()));
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      const Matrix<T> want = last_logits(m, seqs[b]);
      const double err = rel_diff<T>(logits.row(Index(b)), want);
      INFO("step " << s << " sequence " << b << ": relative difference " << err);
      CHECK(err <= tol);
    }
    if (s == steps) break;
    std::vector<std::int64_t> next;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      next.push_back((7 * s + 13 * std::int64_t(b) + 5) % V);
      seqs[b].push_back(next.back());
    }
    logits = dec.step(next);
  }
  CHECK(dec.length() == longest + steps);
}

Seqs some_prompts() {
  return {{5, 17, 3, 99, 40, 8}, {60, 1, 1, 2, 33, 70}, {11, 12, 13, 14, 15, 16}};
}
Seqs ragged_prompts() {
  return {{5, 17, 3, 99, 40, 8, 22}, {60}, {11, 12, 13}};
}

GenerateOptions sampled(std::uint64_t seed) {
  GenerateOptions o;
  o.do_sample = true;
  o.temperature = 0.8;
  o.top_k = 30;
  o.top_p = 0.9;
  o.seed = seed;
  o.max_new_tokens = 12;
  return o;
}

// A tiny GPT-2 with a sparse top-2 LoRA-experts adapter at every site, all parameters random.
struct MoeModel {
  ParamStore<double> store;
  std::unique_ptr<GPT2<double>> model;
  MoeModel() {
    model = std::make_unique<GPT2<double>>(read_gpt2_config(kDir + "tiny"));
    AdapterSpec spec;
    spec.kind = AdapterKind::sparse;
    spec.experts = LoraExpertsConfig::mola(4, 2, 2);
    spec.experts.dropout = 0.0;
    TargetModules all;
    all.all_linear = true;
    model->inject(spec, all);
    Rng rng(3);
    model->register_params(store, rng);
    testing::randomize_params(store, 4, 0.15);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("GPT2Decoder: cached logits equal the full forward's last row at every step", "", double,
                   float) {
  const double tol = std::is_same_v<TestType, double> ? 1e-12 : 1e-5;
  ParamStore<TestType> s;
  Rng rng(0);
  auto m = load_gpt2<TestType>(kDir + "tiny", s, rng);
  SECTION("equal-length batch") {
    check_decoder_against_forward(*m, some_prompts(), 10, tol);
  }
  SECTION("left-padded batch of different lengths") {
    check_decoder_against_forward(*m, ragged_prompts(), 10, tol);
  }
  SECTION("one sequence up to n_positions") {
    check_decoder_against_forward(*m, {{4}}, 23, tol);
  }
  SECTION("with a PEFT LoRA adapter") {
    ParamStore<TestType> sl;
    auto ml = load_gpt2<TestType>(kDir + "tiny", sl, rng, kDir + "tiny_lora");
    check_decoder_against_forward(*ml, ragged_prompts(), 8, tol);
  }
  SECTION("with a PEFT IA3 adapter") {
    ParamStore<TestType> si;
    auto mi = load_gpt2<TestType>(kDir + "tiny", si, rng, kDir + "tiny_ia3");
    check_decoder_against_forward(*mi, some_prompts(), 8, tol);
  }
}

TEST_CASE(
    "GPT2Decoder with a sparse MoE adapter: routers route the new tokens; router state is left as found") {
  MoeModel mm;
  auto& m = *mm.model;
  const auto routers = m.routers();
  REQUIRE(routers.size() == 8);
  routers[0].second->set_token_mask({1, 0, 1});
  routers[0].second->set_call_counter(41);
  check_decoder_against_forward(m, ragged_prompts(), 8, 1e-12);
  // the reference forwards above changed the mask through set_batch; the decoder itself changes nothing
  routers[0].second->set_token_mask({1, 0, 1});
  const auto calls = routers[0].second->call_counter();
  GPT2Decoder<double> dec(m, 10);
  dec.prefill({{1, 2, 3}});
  dec.step({4});
  CHECK(routers[0].second->call_counter() == calls);
  CHECK(routers[0].second->token_mask() == std::vector<std::uint8_t>{1, 0, 1});
  // cached and uncached decoding agree here too
  GenerateOptions o = sampled(9);
  const auto a = generate(m, ragged_prompts(), o);
  o.use_cache = false;
  CHECK(generate(m, ragged_prompts(), o) == a);
  CHECK(routers[0].second->call_counter() == calls);
}

TEST_CASE(
    "GPT2Decoder with an MPOE expert bank in place of one MLP: the bank's router routes the new tokens") {
  GPT2<double> m(read_gpt2_config(kDir + "tiny"));
  MpoeConfig mc;
  mc.n_experts = 3;
  mc.n_cores = 3;
  mc.scale_by_prob = true;
  m.use_mpoe(mc, {1});
  ParamStore<double> s;
  Rng rng(1);
  m.register_params(s, rng);
  testing::randomize_params(s, 2, 0.15);
  REQUIRE(m.block(1).has_mpoe());
  REQUIRE(m.routers().size() == 1);
  check_decoder_against_forward(m, ragged_prompts(), 8, 1e-12);
  GenerateOptions o = sampled(2);
  const auto a = generate(m, some_prompts(), o);
  o.use_cache = false;
  CHECK(generate(m, some_prompts(), o) == a);
  m.set_training(true);
  CHECK_THROWS_WITH(generate(m, some_prompts(), o), Catch::Contains("training mode"));
}

TEMPLATE_TEST_CASE("generate: cached and uncached decoding give the same tokens, greedy and sampled", "",
                   double, float) {
  ParamStore<TestType> s, sl;
  Rng rng(0);
  auto m = load_gpt2<TestType>(kDir + "tiny", s, rng);
  auto ml = load_gpt2<TestType>(kDir + "tiny", sl, rng, kDir + "tiny_lora");
  for (GPT2<TestType>* model : {m.get(), ml.get()}) {
    for (const Seqs& prompts : {some_prompts(), ragged_prompts(), Seqs{{42}}}) {
      for (std::uint64_t seed : {0, 1, 2}) {
        for (bool sample : {false, true}) {
          GenerateOptions o = sample ? sampled(seed) : GenerateOptions{};
          o.max_new_tokens = 12;
          const auto cached = generate(*model, prompts, o);
          o.use_cache = false;
          const auto uncached = generate(*model, prompts, o);
          CAPTURE(seed, sample, prompts.size());
          CHECK(cached == uncached);
          for (const auto& g : cached) CHECK(g.size() == 12);
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("generate: greedy decoding equals Hugging Face's model.generate(do_sample=False)", "",
                   double, float) {
  for (const std::string dir : {"tiny", "tiny_lora"}) {
    CAPTURE(dir);
    ParamStore<TestType> s;
    Rng rng(0);
    auto m = load_gpt2<TestType>(kDir + "tiny", s, rng, dir == "tiny" ? "" : kDir + dir);
    const auto f = SafetensorsFile::load(kDir + dir + "/generate.safetensors");
    REQUIRE(f.to_vector<double>("min_gap")[0] > 1e-3);  // float32 argmaxes are not near ties
    const Index P = f.info("prompt_ids").shape[1], N = f.info("greedy_ids").shape[1] - P;
    GenerateOptions o;
    o.max_new_tokens = N;
    auto new_tokens = [&](const Seqs& full) {  // HF returns prompt + new tokens
      Seqs out;
      for (const auto& r : full) out.emplace_back(r.begin() + P, r.end());
      return out;
    };
    for (bool cache : {true, false}) {
      o.use_cache = cache;
      CHECK(generate(*m, rows_of(f, "prompt_ids"), o) == new_tokens(rows_of(f, "greedy_ids")));
      // left-padded to different lengths: the padding is internal, the prompts are the unpadded rows
      CHECK(generate(*m, rows_of(f, "ragged_prompt_ids", "ragged_attention_mask"), o) ==
            new_tokens(rows_of(f, "ragged_greedy_ids")));
    }
    // a stop token: the sequence that emits it ends there (HF pads the rest), the other one goes on
    const std::int64_t eos = f.to_vector<std::int64_t>("eos_id")[0];
    o.eos_token_ids = {eos};
    const auto got = generate(*m, rows_of(f, "prompt_ids"), o);
    const auto want = new_tokens(rows_of(f, "eos_greedy_ids"));
    REQUIRE(got.size() == 2);
    REQUIRE(got[0].size() < std::size_t(N));
    CHECK(got[0].back() == eos);
    CHECK(std::vector<std::int64_t>(want[0].begin(), want[0].begin() + std::ptrdiff_t(got[0].size())) ==
          got[0]);
    CHECK(got[1] == want[1]);
  }
}

TEST_CASE("generate: top_k = 1 equals greedy; the seed decides the samples; stop tokens end a sequence") {
  ParamStore<float> s;
  Rng rng(0);
  auto m = load_gpt2<float>(kDir + "tiny", s, rng);
  GenerateOptions greedy;
  greedy.max_new_tokens = 15;
  const auto g = generate(*m, some_prompts(), greedy);
  for (std::uint64_t seed : {1, 2, 3}) {
    GenerateOptions o = greedy;
    o.do_sample = true;
    o.top_k = 1;
    o.temperature = 1.7;
    o.seed = seed;
    CHECK(generate(*m, some_prompts(), o) == g);
  }
  GenerateOptions a = sampled(5), b = sampled(5), c = sampled(6);
  a.temperature = b.temperature = c.temperature = 3.0;  // flat enough that seeds matter
  a.top_k = b.top_k = c.top_k = 0;
  a.top_p = b.top_p = c.top_p = 1.0;
  const auto ga = generate(*m, some_prompts(), a);
  CHECK(generate(*m, some_prompts(), b) == ga);
  CHECK(generate(*m, some_prompts(), c) != ga);
  // eos: every sequence stops at its first stop token
  GenerateOptions e = a;
  e.eos_token_ids = {ga[0][3], ga[1][5]};
  const auto ge = generate(*m, some_prompts(), e);
  for (std::size_t i = 0; i < ge.size(); ++i) {
    std::size_t stop = ga[i].size();
    for (std::size_t t = 0; t < ga[i].size(); ++t)
      if (ga[i][t] == e.eos_token_ids[0] || ga[i][t] == e.eos_token_ids[1]) {
        stop = t + 1;
        break;
      }
    CHECK(ge[i] == std::vector<std::int64_t>(ga[i].begin(), ga[i].begin() + std::ptrdiff_t(stop)));
  }
  // the uncached path runs the model's forward; the model's batch layout is put back afterwards
  m->set_batch(2, 9, std::vector<std::int64_t>(18, 1));
  GenerateOptions u = a;
  u.use_cache = false;
  CHECK(generate(*m, ragged_prompts(), u) == generate(*m, ragged_prompts(), a));
  CHECK(m->block(1).attn().batch() == 2);
  CHECK(m->block(1).attn().seq_len() == 9);
  CHECK(m->block(1).attn().key_mask() == std::vector<std::int64_t>(18, 1));
  GenerateOptions none;
  none.max_new_tokens = 0;
  CHECK(generate(*m, some_prompts(), none) == Seqs(3));
}

TEST_CASE("sampling_distribution: temperature, top-k (ties kept) and top-p (smallest set reaching p) as HF") {
  const std::vector<double> z{1.0, 3.0, 2.0, 3.0, -1.0, 0.5};
  GenerateOptions o;
  o.do_sample = true;
  auto softmax = [](std::vector<double> v, double t) {
    double m = -1e300, s = 0;
    for (double x : v) m = std::max(m, x / t);
    for (double& x : v) s += (x = std::exp(x / t - m));
    for (double& x : v) x /= s;
    return v;
  };
  SECTION("temperature only") {
    o.temperature = 0.7;
    const auto p = sampling_distribution(z.data(), 6, o);
    const auto want = softmax(z, 0.7);
    for (std::size_t i = 0; i < 6; ++i) CHECK(p[i] == Approx(want[i]).epsilon(1e-12));
  }
  SECTION("top-k keeps ties with the k-th") {
    o.top_k = 2;
    auto p = sampling_distribution(z.data(), 6, o);
    CHECK(p[1] == Approx(0.5));
    CHECK(p[3] == Approx(0.5));
    o.top_k = 3;
    p = sampling_distribution(z.data(), 6, o);
    CHECK(p[0] == 0.0);
    CHECK(p[2] > 0.0);
    CHECK(p[4] == 0.0);
    o.top_k = 100;  // clamped to the vocabulary
    CHECK(sampling_distribution(z.data(), 6, o) == sampling_distribution(z.data(), 6, GenerateOptions{}));
  }
  SECTION("top-p keeps the smallest most-likely set whose mass reaches p, at least one token") {
    const auto full = softmax(z, 1.0);  // order: 1, 3 (tie, by index), 2, 0, 5, 4
    o.top_p = full[1] + full[3] + 0.5 * full[2];
    auto p = sampling_distribution(z.data(), 6, o);
    const double kept = full[1] + full[3] + full[2];
    CHECK(p[1] == Approx(full[1] / kept));
    CHECK(p[2] == Approx(full[2] / kept));
    CHECK(p[0] == 0.0);
    CHECK(p[5] == 0.0);
    o.top_p = 1e-9;  // one token survives
    p = sampling_distribution(z.data(), 6, o);
    CHECK(p[1] == 1.0);
    for (std::size_t i : {0, 2, 3, 4, 5}) CHECK(p[i] == 0.0);
  }
  SECTION("infinite logits") {
    const double inf = std::numeric_limits<double>::infinity();
    const std::vector<double> zi{inf, 0.0, inf, -inf};
    CHECK(sampling_distribution(zi.data(), 4, o) == std::vector<double>{0.5, 0.0, 0.5, 0.0});
    const std::vector<double> all_neg(3, -inf);
    CHECK(sampling_distribution(all_neg.data(), 3, o) == std::vector<double>(3, 1.0 / 3));
  }
  SECTION("next_token draws by the distribution") {
    o.temperature = 1.3;
    o.top_p = 0.95;
    const auto p = sampling_distribution(z.data(), 6, o);
    std::vector<double> count(6, 0.0);
    Rng r(11);
    const int n = 40000;
    for (int i = 0; i < n; ++i) count[std::size_t(next_token(z.data(), 6, o, r.uniform()))] += 1.0 / n;
    for (std::size_t i = 0; i < 6; ++i) CHECK(count[i] == Approx(p[i]).margin(0.01));
    o.do_sample = false;
    CHECK(next_token(z.data(), 6, o, 0.5) == 1);  // greedy: the first of the tied maxima
  }
}

TEST_CASE("generate: bad options and inputs are ConfigError/ShapeError naming what is wrong") {
  ParamStore<float> s;
  Rng rng(0);
  auto m = load_gpt2<float>(kDir + "tiny", s, rng);
  auto error = [&](GenerateOptions o, Seqs prompts = {{1, 2, 3}}) -> std::string {
    try {
      generate(*m, prompts, o);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  GenerateOptions o;
  o.do_sample = true;
  o.temperature = 0.0;
  CHECK_THAT(error(o), Catch::Contains("temperature must be a finite number > 0, got 0"));
  o.temperature = std::nan("");
  CHECK_THAT(error(o), Catch::Contains("temperature"));
  o = GenerateOptions{};
  o.top_p = 0.0;
  CHECK_THAT(error(o), Catch::Contains("top_p must be in (0, 1]"));
  o.top_p = 1.5;
  CHECK_THAT(error(o), Catch::Contains("top_p must be in (0, 1]"));
  o = GenerateOptions{};
  o.top_k = -1;
  CHECK_THAT(error(o), Catch::Contains("top_k must be >= 0"));
  o = GenerateOptions{};
  o.max_new_tokens = -2;
  CHECK_THAT(error(o), Catch::Contains("max_new_tokens must be >= 0"));
  o = GenerateOptions{};
  o.eos_token_ids = {101};
  CHECK_THAT(error(o), Catch::Contains("eos token id 101 is outside the vocabulary [0, 101)"));
  o = GenerateOptions{};
  o.max_new_tokens = 22;
  CHECK_THAT(error(o), Catch::Contains("prompt (3 tokens) + max_new_tokens (22) = 25 exceeds the model's "
                                       "n_positions = 24"));
  o.max_new_tokens = 21;
  CHECK(error(o) == "no error");
  CHECK_THAT(error(o, {{1, 2}, {}}), Catch::Contains("prompt 1 is empty"));
  CHECK_THAT(error(o, {}), Catch::Contains("no prompts"));
  CHECK_THAT(error(o, {{1, 101}}), Catch::Contains("prompt 0 token 1 is id 101, outside the vocabulary"));
  m->set_training(true);
  CHECK_THAT(error(o), Catch::Contains("training mode"));
  m->set_training(false);
  GPT2Decoder<float> dec(*m, 4);
  CHECK_THROWS_WITH(dec.step({1}), Catch::Contains("call prefill() before step()"));
  dec.prefill({{1, 2, 3}});
  CHECK_THROWS_WITH(dec.step({1, 2}), Catch::Contains("step got 2 tokens, expected one per sequence (1)"));
  dec.step({4});
  CHECK_THROWS_WITH(dec.step({5}), Catch::Contains("the cache is full (4 positions)"));
  CHECK_THROWS_WITH(GPT2Decoder<float>(*m, 25),
                    Catch::Contains("capacity 25 must be in [1, n_positions = 24]"));
}
