/// @file pemoe.hpp
/// @brief Umbrella header: includes every public pemoe header (checked in, not generated).
///
/// Prefer including the concept headers you use (`pemoe/adapters/lora.hpp`, ...): they compile faster.
#pragma once

#include "pemoe/version.hpp"

// core
#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

// nn
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"

// adapters
#include "pemoe/adapters/lora.hpp"

// io
#include "pemoe/io/plot.hpp"
#include "pemoe/io/png.hpp"

// train
#include "pemoe/train/adamw.hpp"
