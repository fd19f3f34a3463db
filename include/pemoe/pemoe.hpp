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
#include "pemoe/core/param_select.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/core/xtensor_view.hpp"

// nn
#include "pemoe/nn/activations.hpp"
#include "pemoe/nn/attention.hpp"
#include "pemoe/nn/cross_entropy.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/embedding.hpp"
#include "pemoe/nn/layernorm.hpp"
#include "pemoe/nn/linear.hpp"

// moe: routers, auxiliary losses, MoLA allocation
#include "pemoe/moe/aux_loss.hpp"
#include "pemoe/moe/mola_allocation.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/moe/topk.hpp"

// mpo: matrix product operators
#include "pemoe/mpo/contract.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"
#include "pemoe/mpo/shape.hpp"

// adapters
#include "pemoe/adapters/ia3.hpp"
#include "pemoe/adapters/lora.hpp"
#include "pemoe/adapters/lora_experts.hpp"
#include "pemoe/adapters/molora.hpp"
#include "pemoe/adapters/mov.hpp"
#include "pemoe/adapters/mpo_linear.hpp"
#include "pemoe/adapters/mpoe.hpp"
#include "pemoe/adapters/sparse_lora.hpp"

// data: tokenizers, instruction data, batching, sampling, the offline task suite
#include "pemoe/data/bpe_tokenizer.hpp"
#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/dynmix.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/packing.hpp"
#include "pemoe/data/sampler.hpp"
#include "pemoe/data/tasks.hpp"

// io
#include "pemoe/io/dtype.hpp"
#include "pemoe/io/safetensors.hpp"

// models
#include "pemoe/models/adapter_json.hpp"
#include "pemoe/models/dynmix_round.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "pemoe/models/linear_site.hpp"
#include "pemoe/models/lm_eval.hpp"
#include "pemoe/models/peft_dir.hpp"
#include "pemoe/models/t5.hpp"
#include "pemoe/models/t5_attention.hpp"
#include "pemoe/models/t5_generate.hpp"
#include "pemoe/models/t5_hf.hpp"
#include "pemoe/models/target_modules.hpp"

// train
#include "pemoe/train/adafactor.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/checkpoint.hpp"
#include "pemoe/train/clip.hpp"
#include "pemoe/train/finetune_config.hpp"
#include "pemoe/train/gradient_mask.hpp"
#include "pemoe/train/param_groups.hpp"
#include "pemoe/train/schedule.hpp"
#include "pemoe/train/sgd.hpp"
#include "pemoe/train/trainer.hpp"
