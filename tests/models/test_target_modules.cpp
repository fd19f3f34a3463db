// TargetModules selects exactly the modules PEFT's check_target_module_exists selects
// (tests/data/models/make_target_fixtures.py), plus all-linear and a bad regex.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pemoe/models/target_modules.hpp"

using namespace pemoe;

TEST_CASE("TargetModules agrees with PEFT on suffixes, exact names, regex, layers, patterns, exclusions") {
  std::ifstream in(PEMOE_TEST_DATA_DIR "/models/target_modules.json");
  REQUIRE(in);
  const auto j = nlohmann::json::parse(in);
  const auto keys = j.at("keys").get<std::vector<std::string>>();
  for (const auto& [name, c] : j.at("cases").items()) {
    const auto& cfg = c.at("config");
    TargetModules t;
    if (cfg.at("target_modules").is_string())
      t.regex = cfg.at("target_modules").get<std::string>();
    else
      t.names = cfg.at("target_modules").get<std::vector<std::string>>();
    if (cfg.contains("layers_to_transform"))
      t.layers_to_transform = cfg.at("layers_to_transform").get<std::vector<long>>();
    if (cfg.contains("layers_pattern"))
      t.layers_pattern = cfg.at("layers_pattern").get<std::vector<std::string>>();
    if (cfg.contains("exclude_modules"))
      t.exclude = cfg.at("exclude_modules").get<std::vector<std::string>>();
    const auto want = c.at("selected").get<std::vector<std::string>>();
    for (const auto& k : keys) {
      const bool expected = std::find(want.begin(), want.end(), k) != want.end();
      INFO(name << ": " << k);
      CHECK(t.matches(k) == expected);
    }
  }
}

TEST_CASE("TargetModules all-linear takes every site but the head; a bad regex is a ConfigError") {
  TargetModules t;
  t.all_linear = true;
  CHECK(t.matches("transformer.h.3.attn.c_attn"));
  CHECK_FALSE(t.matches("lm_head", /*is_output_head=*/true));
  t.layers_to_transform = {1};
  CHECK_FALSE(t.matches("transformer.h.3.attn.c_attn"));
  CHECK(t.matches("transformer.h.1.mlp.c_fc"));
  TargetModules bad;
  bad.regex = "(";
  CHECK_THROWS_AS(bad.matches("transformer.h.0.attn.c_attn"), ConfigError);
}
