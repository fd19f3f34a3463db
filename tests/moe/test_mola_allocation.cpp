// moe/mola_allocation.hpp: presets for any layer count, parsing, and MoLA's LLaMA-2-7B parameter counts
// reproduced from shapes alone (and checked against a ParamStore built from the same shapes).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "pemoe/adapters/sparse_lora.hpp"
#include "pemoe/moe/mola_allocation.hpp"

using namespace pemoe;

namespace {
std::vector<Index> experts_of(const std::vector<LayerExperts>& a) {
  std::vector<Index> e;
  for (const auto& l : a) e.push_back(l.n_experts);
  return e;
}
}  // namespace

TEST_CASE("MoLA presets: four groups of layers, for 32, 12, 4 and uneven layer counts") {
  CHECK(mola_groups(MolaShape::inverted_triangle) == std::array<Index, 4>{2, 4, 6, 8});
  CHECK(mola_groups(MolaShape::triangle) == std::array<Index, 4>{8, 6, 4, 2});
  CHECK(mola_groups(MolaShape::hourglass) == std::array<Index, 4>{8, 2, 2, 8});
  CHECK(mola_groups(MolaShape::diamond) == std::array<Index, 4>{2, 8, 8, 2});
  CHECK(mola_groups(MolaShape::rectangle) == std::array<Index, 4>{5, 5, 5, 5});
  const auto v12 = mola_allocation(MolaShape::inverted_triangle, 12);
  CHECK(experts_of(v12) == std::vector<Index>{2, 2, 2, 4, 4, 4, 6, 6, 6, 8, 8, 8});  // spec §5.5
  const auto v32 = mola_allocation(MolaShape::triangle, 32, 2, 8);
  REQUIRE(v32.size() == 32);
  for (Index l = 0; l < 32; ++l) {
    CHECK(v32[l].n_experts == std::array<Index, 4>{8, 6, 4, 2}[l / 8]);
    CHECK(v32[l].top_k == 2);
    CHECK(v32[l].r == 8);
  }
  CHECK(experts_of(mola_allocation(MolaShape::diamond, 4)) == std::vector<Index>{2, 8, 8, 2});
  // 10 layers: group sizes 3,2,3,2 (layer ℓ in group ⌊4ℓ/10⌋)
  CHECK(experts_of(mola_allocation("2468", 10)) == std::vector<Index>{2, 2, 2, 4, 4, 6, 6, 6, 8, 8});
  CHECK(experts_of(mola_allocation("8228", 1)) == std::vector<Index>{8});
  // k is clamped to a layer's E
  const auto k3 = mola_allocation("2468", 8, 3);
  CHECK(k3[0].top_k == 2);
  CHECK(k3[7].top_k == 3);
  CHECK(mola_allocation("2882", 8) == mola_allocation(MolaShape::diamond, 8));
  CHECK_THROWS_AS(mola_allocation("246", 8), ConfigError);
  CHECK_THROWS_AS(mola_allocation("24x8", 8), ConfigError);
  CHECK_THROWS_AS(mola_allocation(MolaShape::diamond, 0), ConfigError);
  const auto explicit_layers = mola_allocation({2, 4}, {1, 2}, {8, 4});
  CHECK(explicit_layers[1] == LayerExperts{4, 2, 4});
  CHECK_THROWS_AS(mola_allocation({2, 4}, {3, 2}, {8, 4}), ConfigError);
  CHECK_THROWS_AS(mola_allocation({2, 4}, {1}, {8, 4}), ConfigError);
}

TEST_CASE("Parameter counts reproduce MoLA's LLaMA-2-7B figures from shapes alone (spec §2.5)") {
  const auto llama = llama_linear_shapes(4096, 11008);
  // one rank-8 expert across the 7 modules, and its share of the routers
  Index expert = 0, router = 0;
  for (const auto& m : llama) {
    expert += lora_experts_params(m, 1, 8, false);
    router += m.d_in;
  }
  CHECK(expert == 624640);
  CHECK(router == 35584);
  for (MolaShape shape : {MolaShape::inverted_triangle, MolaShape::triangle, MolaShape::hourglass,
                          MolaShape::diamond, MolaShape::rectangle})
    CHECK(mola_params(mola_allocation(shape, 32, 2, 8), llama) == 105635840);
  CHECK(mola_params(mola_allocation("8888", 32), llama) == 169017344);
  for (const char* s16 : {"4444", "6532", "6226", "2356", "2662"})
    CHECK(mola_params(mola_allocation(s16, 32), llama) == 84508672);
  CHECK(lora_params(32, llama, 64) == 159907840);
}

TEST_CASE("mola_params equals the trainable count of a ParamStore built from the same allocation") {
  const std::vector<LinearShape> modules = {{12, 12}, {12, 20}, {20, 12}};
  const auto alloc = mola_allocation("2468", 4, 2, 3);
  ParamStore<float> s;
  Rng rng(1);
  std::vector<SparseLoRAExperts<float>> layers;
  for (std::size_t l = 0; l < alloc.size(); ++l)
    for (std::size_t m = 0; m < modules.size(); ++m) {
      auto cfg = LoraExpertsConfig::mola(alloc[l].n_experts, alloc[l].top_k, alloc[l].r);
      layers.emplace_back(LinearConfig{modules[m].d_in, modules[m].d_out, false}, cfg);
      layers.back().register_params(s, "layers." + std::to_string(l) + "." + std::to_string(m), rng);
    }
  CHECK(s.num_trainable() == mola_params(alloc, modules));
  CHECK(s.num_trainable() > 0);
}
