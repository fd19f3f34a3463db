// `pemoe generate --model DIR [--adapter DIR] --prompt-ids "1,2,3" [--max-new-tokens N] [--temperature T]
// [--top-k K] [--top-p P] [--seed S] [--eos ID]`: continues token-id prompts with a Hugging Face GPT-2, or
// decodes from token-id sources with a T5 (cached decoder).
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../cli.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "pemoe/models/t5_generate.hpp"
#include "pemoe/models/t5_hf.hpp"

namespace pemoe::cli {
namespace {

struct GenerateCliOptions {
  std::string model, adapter, dtype = "f32";
  std::vector<std::string> prompts;
  GenerateOptions gen;
  bool sample = false, no_cache = false;
};

// "1, 2,3" -> {1, 2, 3}; `UsageError` naming the option and the word otherwise.
std::vector<std::int64_t> parse_ids(const std::string& text) {
  std::vector<std::int64_t> ids;
  for (const std::string& word : detail::split_words(text)) {
    long long v = 0;
    if (word.empty() || !CLI::detail::lexical_cast(word, v) || v < 0)
      throw UsageError("--prompt-ids: '" + text + "' is not a comma-separated list of token ids ('" + word +
                       "' is not an integer >= 0)");
    ids.push_back(v);
  }
  return ids;
}

std::string join_ids(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

template <class T>
int run_generate(const GenerateCliOptions& o) {
  std::vector<std::vector<std::int64_t>> prompts;
  for (const auto& p : o.prompts) prompts.push_back(parse_ids(p));
  ParamStore<T> store;
  Rng rng(0);
  GenerateOptions g = o.gen;
  g.do_sample = o.sample;
  g.use_cache = !o.no_cache;
  if (is_t5_dir(o.model)) {  // the prompts are the encoder's sources; eos: the config's unless --eos
    if (o.dtype == "bf16") throw UsageError("--dtype bf16: a T5 decodes in f32 or f64");
    auto t5 = load_t5<T>(o.model, store, rng, o.adapter);
    t5->set_training(false);
    for (const auto& ids : generate(*t5, prompts, g)) std::cout << join_ids(ids) << "\n";
    return 0;
  }
  auto model = load_gpt2<T>(o.model, store, rng, o.adapter);
  model->set_training(false);
  if constexpr (std::is_same_v<T, float>) {
    if (o.dtype == "bf16") {  // inference: everything frozen, the linear weights kept only as bf16 packs
      store.set_all_trainable(false);
      model->pack_frozen(PackDtype::bf16, true);
    }
  }
  for (const auto& ids : generate(*model, prompts, g)) std::cout << join_ids(ids) << "\n";
  return 0;
}

// A number > 0 (temperature) / in (0, 1] (top-p), named in the message by CLI11.
CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        double x = 0;
        if (CLI::detail::lexical_cast(v, x) && std::isfinite(x) && x > 0) return {};
        return "needs a number > 0, got '" + v + "'";
      },
      "");
}
CLI::Validator probability() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        double x = 0;
        if (CLI::detail::lexical_cast(v, x) && x > 0 && x <= 1) return {};
        return "needs a number in (0, 1], got '" + v + "'";
      },
      "");
}

void setup_generate(CLI::App& cmd) {
  auto o = std::make_shared<GenerateCliOptions>();
  const long long big = std::numeric_limits<long long>::max();
  cmd.add_option("--model", o->model,
                 "a Hugging Face GPT-2 or T5 directory (config.json, model.safetensors; model_type \"t5\")")
      ->required()
      ->type_name("DIR");
  cmd.add_option("--prompt-ids", o->prompts,
                 "a prompt as comma-separated token ids (\"464,3290,318\"); repeat the option for a batch")
      ->required()
      ->type_name("IDS")
      ->allow_extra_args(false);
  cmd.add_option("--adapter", o->adapter,
                 "a PEFT adapter directory (LoRA, IA3, or pemoe's MoE extension) on top of the model")
      ->type_name("DIR");
  cmd.add_option(
         "--max-new-tokens", o->gen.max_new_tokens,
         "tokens to generate per prompt at most (default 20); prompt + this <= the model's n_positions")
      ->type_name("N")
      ->check(integer_in(0, big));
  cmd.add_option("--temperature", o->gen.temperature,
                 "sample with the logits divided by T (> 0; implies sampling)")
      ->type_name("T")
      ->check(positive_number());
  cmd.add_option("--top-k", o->gen.top_k, "sample from the K most likely tokens (0 = all; implies sampling)")
      ->type_name("K")
      ->check(integer_in(0, big));
  cmd.add_option(
         "--top-p", o->gen.top_p,
         "sample from the smallest set of most likely tokens with probability >= P (implies sampling)")
      ->type_name("P")
      ->check(probability());
  cmd.add_flag("--sample", o->sample, "sample from the full distribution (default: greedy)")
      ->disable_flag_override();
  cmd.add_option("--seed", o->gen.seed, "seed of the sampling (default 0)")
      ->type_name("S")
      ->check(integer_in(0, big));
  cmd.add_option("--eos", o->gen.eos_token_ids, "stop token: a sequence ends after emitting it (repeatable)")
      ->type_name("ID")
      ->check(integer_in(0, big))
      ->allow_extra_args(false);
  cmd.add_flag(
         "--no-cache", o->no_cache,
         "recompute the whole sequence at every step instead of using the key/value cache (slow; a check)")
      ->disable_flag_override();
  cmd.add_option(
         "--dtype", o->dtype,
         "compute in f32 (default) or f64; bf16: f32 with the weights of every linear layer and of the "
         "head packed in bf16 (f32 accumulation; needs oneDNN and a CPU with AVX512-BF16 or AMX)")
      ->type_name("D")
      ->check(one_of({"f32", "f64", "bf16"}));
  cmd.footer(
      "Prints the generated token ids of each prompt, comma-separated, one line per --prompt-ids (a stop\n"
      "token, when emitted, is the last id of its line). There is no tokenizer yet: prompts are ids.\n"
      "Greedy (argmax) unless --sample, --temperature, --top-k or --top-p is given; sampling applies\n"
      "temperature, then top-k, then top-p as Hugging Face does, with a counter-based rng seeded by --seed\n"
      "(the same seed gives the same ids). The model's generation_config.json is not read: stop tokens\n"
      "are only those given with --eos.\n"
      "A T5 (config.json model_type \"t5\") reads each --prompt-ids as an encoder source and decodes from\n"
      "decoder_start_token_id with a cached decoder; without --eos it stops at the config's eos_token_id.");
  set_action(cmd, [o, &cmd] {
    for (const char* opt : {"--temperature", "--top-k", "--top-p"})
      if (cmd.count(opt) > 0) o->sample = true;
    return o->dtype == "f64" ? run_generate<double>(*o) : run_generate<float>(*o);
  });
}

[[maybe_unused]] const bool registered_generate = register_command(
    {"generate",
     "continue token-id prompts with a Hugging Face GPT-2, or decode from them with a T5 (+ PEFT adapter)",
     setup_generate});

}  // namespace
}  // namespace pemoe::cli
