// The gradient checker itself: it passes a correct backward and FAILS a deliberately wrong one.
#include <catch2/catch.hpp>

#include "pemoe/core/param_store.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

// y = tanh(x·W) with a hand-written backward; `bug` breaks it in one place.
enum class ContractBug { none, overwrite_grad, add_into_dx, skip_dx_row };

static testing::GradcheckResult check_tanh_layer(bool bug_in_dw, bool bug_in_dx,
                                                 ContractBug contract = ContractBug::none) {
  ParamStore<double> s;
  const ParamId w = s.add("w", {4, 3});
  testing::randomize_params(s, 3);
  auto x = testing::random_matrix(5, 4, 4);
  return testing::gradcheck(
      s, x,
      [&](const Matrix<double>& xx, Matrix<double>& y) {
        y = (xx * s.matrix(w)).array().tanh().matrix();
        return 0.0;
      },
      [&](const Matrix<double>& xx, const Matrix<double>& dy, Matrix<double>& dx) {
        Matrix<double> y = (xx * s.matrix(w)).array().tanh().matrix();
        Matrix<double> dz = dy.cwiseProduct((1.0 - y.array().square()).matrix());
        if (contract == ContractBug::overwrite_grad)
          s.grad_matrix(w) = xx.transpose() * dz;
        else
          s.grad_matrix(w) += (bug_in_dw ? 1.01 : 1.0) * xx.transpose() * dz;
        if (contract == ContractBug::add_into_dx)
          dx += dz * s.matrix(w).transpose();
        else if (contract == ContractBug::skip_dx_row)
          dx.topRows(4) = (dz * s.matrix(w).transpose()).topRows(4);
        else
          dx = dz * s.matrix(w).transpose();
        if (bug_in_dx) dx(2, 1) += 1e-3;
      });
}

TEST_CASE("gradcheck passes a correct backward") {
  const auto r = check_tanh_layer(false, false);
  INFO(r.report());
  CHECK(r.ok(1e-6));
  CHECK(r.checked == 2 * (20 + 12));  // each entry against central differences, and twice-backward
}

TEST_CASE("gradcheck fails a wrong parameter gradient and says where") {
  const auto r = check_tanh_layer(true, false);
  INFO(r.report());
  CHECK_FALSE(r.ok(1e-6));
  CHECK(r.where.rfind("w[", 0) == 0);
}

TEST_CASE("gradcheck fails a wrong input gradient and says where") {
  const auto r = check_tanh_layer(false, true);
  INFO(r.report());
  CHECK_FALSE(r.ok(1e-6));
  CHECK(r.where == "x[9]");
}

TEST_CASE("gradcheck fails a backward that overwrites parameter gradients instead of adding") {
  const auto r = check_tanh_layer(false, false, ContractBug::overwrite_grad);
  INFO(r.report());
  CHECK_FALSE(r.ok(1e-6));
}

TEST_CASE("gradcheck fails a backward that adds into dx instead of writing it") {
  const auto r = check_tanh_layer(false, false, ContractBug::add_into_dx);
  INFO(r.report());
  CHECK_FALSE(r.ok(1e-6));
}

TEST_CASE("gradcheck fails a backward that leaves part of dx unwritten") {
  const auto r = check_tanh_layer(false, false, ContractBug::skip_dx_row);
  INFO(r.report());
  CHECK_FALSE(r.ok(1e-6));
  CHECK(r.where.find("x[") != std::string::npos);
}
