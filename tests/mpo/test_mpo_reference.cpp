// mpo/: pemoe's TT-SVD against an independent NumPy implementation of the reference Matrix2MPO
// (fixtures written by tests/data/mpo/make_fixtures.py).
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"

using namespace pemoe;

TEST_CASE("decompose matches the NumPy reference: spectra, truncation, reconstruction, |symmetric cores|") {
  const std::string path = std::string(PEMOE_TEST_DATA_DIR) + "/mpo/mpo_reference.json";
  std::ifstream f(path);
  REQUIRE(f.good());
  const nlohmann::json doc = nlohmann::json::parse(f);
  REQUIRE(doc.at("cases").size() >= 5);
  for (const auto& c : doc.at("cases")) {
    const std::string name = c.at("name");
    INFO("fixture " << name);
    const MpoShape shape{c.at("row_modes").get<std::vector<Index>>(),
                         c.at("col_modes").get<std::vector<Index>>()};
    const auto w = c.at("W").get<std::vector<double>>();
    REQUIRE(Index(w.size()) == shape.rows() * shape.cols());
    const Matrix<double> W = ConstMatrixMap<double>(w.data(), shape.rows(), shape.cols());
    TruncationPolicy pol;
    if (!c.at("max_bond").is_null()) pol.max_bond = c.at("max_bond").get<Index>();
    const auto m = decompose<double>(W, shape, pol, MpoGauge::symmetric);

    CHECK(m.bond_dims() == c.at("bond_dims").get<std::vector<Index>>());
    const auto spectra = c.at("spectra").get<std::vector<std::vector<double>>>();
    REQUIRE(spectra.size() == m.spectra.size());
    for (std::size_t b = 0; b < spectra.size(); ++b) {
      REQUIRE(spectra[b].size() == m.spectra[b].size());
      for (std::size_t i = 0; i < spectra[b].size(); ++i)
        CHECK(m.spectra[b][i] == Approx(spectra[b][i]).epsilon(1e-10).margin(1e-12 * spectra[b][0]));
    }
    CHECK(m.truncation_error == Approx(c.at("truncation_error").get<double>()).epsilon(1e-9).margin(1e-12));
    const Matrix<double> rec = reconstruct(m);
    if (c.contains("reconstruction")) {
      const auto r = c.at("reconstruction").get<std::vector<double>>();
      const Matrix<double> R = ConstMatrixMap<double>(r.data(), shape.rows(), shape.cols());
      CHECK((rec - R).norm() <= 1e-11 * R.norm());
    } else {
      CHECK((rec - W).norm() <= 1e-12 * W.norm());
    }
    if (c.contains("abs_symmetric_cores")) {
      const auto ac = c.at("abs_symmetric_cores").get<std::vector<std::vector<double>>>();
      REQUIRE(ac.size() == m.cores.size());
      for (std::size_t k = 0; k < ac.size(); ++k) {
        REQUIRE(ac[k].size() == m.cores[k].size());
        double worst = 0, scale = 0;
        for (std::size_t e = 0; e < ac[k].size(); ++e) {
          worst = std::max(worst, std::abs(std::abs(m.cores[k].data()[e]) - ac[k][e]));
          scale = std::max(scale, ac[k][e]);
        }
        INFO("core " << k);
        CHECK(worst <= 1e-9 * scale);
      }
    }
  }
}
