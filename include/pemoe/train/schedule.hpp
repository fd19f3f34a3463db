/// @file schedule.hpp
/// @brief Learning-rate schedules as multipliers of the base rate, with Hugging Face's formulas
/// (`transformers.get_scheduler`): constant, linear warm-up, linear decay, cosine, inverse square root.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "pemoe/core/error.hpp"

namespace pemoe {

/// Which schedule (names as Hugging Face's `SchedulerType`).
enum class ScheduleKind {
  constant,              ///< λ = 1
  constant_with_warmup,  ///< λ = s/w during warm-up, then 1
  linear,                ///< warm-up, then linear decay to 0 at `total_steps`
  cosine,                ///< warm-up, then half a cosine (`num_cycles` 0.5) to 0 at `total_steps`
  inverse_sqrt,          ///< warm-up, then 1/√((s + τ − w)/τ), τ = `timescale` (default: w, or 10 000)
};

/// A schedule's configuration. Steps count optimizer updates from 0 (HF's `LambdaLR` convention: the
/// multiplier at step s is applied to update s + 1).
struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::constant;
  long warmup_steps = 0;    ///< w
  long total_steps = 0;     ///< for linear and cosine decay
  double num_cycles = 0.5;  ///< cosine: number of waves (0.5 = decrease from 1 to 0 once)
  long timescale = 0;       ///< inverse_sqrt: τ; 0 = w, or 10 000 when w = 0 (HF default)

  /// Parses "constant", "constant_with_warmup", "linear", "cosine", "inverse_sqrt"; throws `ConfigError`
  /// listing the allowed names otherwise.
  static ScheduleKind parse(const std::string& name) {
    if (name == "constant") return ScheduleKind::constant;
    if (name == "constant_with_warmup") return ScheduleKind::constant_with_warmup;
    if (name == "linear") return ScheduleKind::linear;
    if (name == "cosine") return ScheduleKind::cosine;
    if (name == "inverse_sqrt") return ScheduleKind::inverse_sqrt;
    throw ConfigError("schedule: unknown kind '" + name +
                      "'; allowed: constant, constant_with_warmup, linear, cosine, inverse_sqrt");
  }
};

/**
 * @brief The multiplier λ(s) of the base learning rate at optimizer step s (lr_s = lr·λ(s)), exactly as
 * `transformers.optimization`'s `get_*_schedule_with_warmup` lambdas compute it.
 */
class Schedule {
 public:
  explicit Schedule(const ScheduleConfig& c = {}) : m_c(c) {
    PEMOE_CHECK_CONFIG(c.warmup_steps >= 0, "schedule: warmup_steps must be >= 0, got ", c.warmup_steps);
    PEMOE_CHECK_CONFIG(
        (c.kind != ScheduleKind::linear && c.kind != ScheduleKind::cosine) || c.total_steps > 0,
        "schedule: linear and cosine decay need total_steps > 0");
    PEMOE_CHECK_CONFIG(c.timescale >= 0, "schedule: timescale must be >= 0");
  }

  /// λ(step).
  double operator()(long step) const {
    const double s = double(step), w = double(m_c.warmup_steps);
    const bool warming = step < m_c.warmup_steps;
    const double warm = s / std::max(1.0, w);
    switch (m_c.kind) {
      case ScheduleKind::constant:
        return 1.0;
      case ScheduleKind::constant_with_warmup:
        return warming ? warm : 1.0;
      case ScheduleKind::linear:
        if (warming) return warm;
        return std::max(0.0, (double(m_c.total_steps) - s) / std::max(1.0, double(m_c.total_steps) - w));
      case ScheduleKind::cosine: {
        if (warming) return warm;
        const double progress = (s - w) / std::max(1.0, double(m_c.total_steps) - w);
        return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * m_c.num_cycles * 2.0 * progress)));
      }
      case ScheduleKind::inverse_sqrt: {
        if (warming) return warm;
        const double tau = m_c.timescale > 0 ? double(m_c.timescale) : (w > 0 ? w : 10000.0);
        return 1.0 / std::sqrt((s + tau - w) / tau);
      }
    }
    return 1.0;
  }
  const ScheduleConfig& config() const { return m_c; }

 private:
  ScheduleConfig m_c;
};

}  // namespace pemoe
