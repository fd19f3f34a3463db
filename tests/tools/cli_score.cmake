# ctest script (cmake -P): `pemoe score` and `pemoe generate` on the tiny Hugging Face GPT-2 fixture
# (tests/data/gpt2/, from make_fixtures.py) and its PEFT LoRA and IA3 adapters.
#   -DPEMOE=<pemoe binary> -DDATA=<tests/data/gpt2> -DWORK=<scratch dir>
# score --dtype f64 must reproduce HF/PEFT's float64 logits, loss and gradients (expected.safetensors: the same
# names and shapes, values within 1e-9, checked by `pemoe diff`); the default f32 output has the same layout.
# generate must print Hugging Face's greedy ids (tiny*/generate.safetensors, copied below). Bad input is a
# one-line error with exit code 1 (runtime) or 2 (usage).
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(TINY ${DATA}/tiny)
set(BATCH ${DATA}/tiny/batch.safetensors)
set(BAD ${DATA}/tiny_cli)

# expect(<rc> <regex the output must match> args...): the output is left in `out`.
function(expect expected_rc pattern)
  execute_process(COMMAND ${PEMOE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL expected_rc)
    message(FATAL_ERROR "pemoe ${ARGN}: exit code ${rc}, expected ${expected_rc}\n${out}${err}")
  endif()
  if(NOT "${out}${err}" MATCHES "${pattern}")
    message(FATAL_ERROR "pemoe ${ARGN}: output does not match '${pattern}':\n${out}${err}")
  endif()
  if(NOT expected_rc EQUAL 0 AND NOT "${ARGV2}" STREQUAL "diff")
    string(REGEX MATCHALL "\n" lines "${err}")
    list(LENGTH lines n)
    if(NOT n EQUAL 1 OR NOT out STREQUAL "")
      message(FATAL_ERROR "pemoe ${ARGN}: an error must be one line on stderr, got:\n${out}${err}")
    endif()
  endif()
  message(STATUS "ok: pemoe ${ARGN} -> ${rc}")
  set(out "${out}" PARENT_SCOPE)
endfunction()

# ---- score of a T5 (tests/data/t5: four LM-head layouts, source and target padding, -100 labels) --------
# The reference logits and loss are float64, its gradients float32-rounded: 1e-6 relative covers that. A
# fixture whose header (the file's start) names no grad.* tensor has logits and loss only.
foreach(layout v11 orig tf5_scale tf5_noscale)
  set(T5DIR ${DATA}/../t5/${layout})
  set(grads --grads)
  set(said "T5 logits \\(2, 5, 37\\), loss [0-9.]+, [0-9]+ gradient tensors")
  file(READ ${T5DIR}/expected.safetensors header OFFSET 8 LIMIT 2000)  # after the 8-byte header size
  if(NOT header MATCHES "grad\\.")
    set(grads "")
    set(said "T5 logits \\(2, 5, 37\\), loss [0-9.]+")
  endif()
  expect(0 "${said}" score --model ${T5DIR} --batch ${T5DIR}/batch.safetensors ${grads} --dtype f64
         --out ${WORK}/t5_${layout}.safetensors)
  expect(0 " 0 differ" diff ${T5DIR}/expected.safetensors ${WORK}/t5_${layout}.safetensors --rtol 1e-6
         --atol 1e-9 --ignore-metadata --any-dtype)
endforeach()
expect(0 "T5 logits \\(2, 5, 37\\), loss" score --model ${DATA}/../t5/v11 --batch ${DATA}/../t5/v11/batch.safetensors
       --out ${WORK}/t5_f32.safetensors)
# T5 + a PEFT adapter that PEFT wrote (tests/data/t5/make_peft_fixtures.py): PEFT's float64 logits, loss and
# adapter gradients under PEFT's keys and shapes
foreach(kind lora ia3)
  expect(0 "T5 logits \\(2, 5, 37\\), loss [0-9.]+, [0-9]+ gradient tensors" score --model ${DATA}/../t5/v11
         --adapter ${DATA}/../t5/peft/${kind} --batch ${DATA}/../t5/v11/batch.safetensors --grads --dtype f64
         --out ${WORK}/t5_${kind}.safetensors)
  expect(0 " 0 differ.*; 0 name/metadata differences" diff ${DATA}/../t5/peft/expected_${kind}.safetensors
         ${WORK}/t5_${kind}.safetensors --rtol 1e-9 --atol 1e-12 --ignore-metadata)
endforeach()
# a GPT-2 adapter on a T5: its sites are not there
expect(1 "match none of the" score --model ${DATA}/../t5/v11 --batch ${DATA}/../t5/v11/batch.safetensors
       --adapter ${TINY}_lora --out ${WORK}/x.safetensors)

# ---- score: against Hugging Face / PEFT in float64 -------------------------------------------------------
expect(0 "usage: pemoe score --model DIR --batch FILE --out FILE \\[options\\]" score --help)
expect(0 "logits \\(2, 9, 101\\), loss 4.635.*, 28 gradient tensors" score --model ${TINY} --batch ${BATCH} --grads
       --dtype f64 --out ${WORK}/tiny.safetensors)
expect(0 "30 tensors compared, 0 differ" diff ${TINY}/expected.safetensors ${WORK}/tiny.safetensors --rtol 1e-9
       --ignore-metadata)
foreach(kind lora ia3)
  expect(0 "logits \\(2, 9, 101\\), loss [0-9.]+, [48] gradient tensors" score --model ${TINY} --adapter ${TINY}_${kind}
         --batch ${BATCH} --grads --dtype f64 --out ${WORK}/tiny_${kind}.safetensors)
  expect(0 "0 differ.*; 0 name/metadata differences" diff ${TINY}_${kind}/expected.safetensors
         ${WORK}/tiny_${kind}.safetensors --rtol 1e-9 --ignore-metadata)
endforeach()
# the comparison can fail: the LoRA model's outputs are not the plain model's
expect(1 "logits.*DIFFERS" diff ${TINY}/expected.safetensors ${WORK}/tiny_lora.safetensors --rtol 1e-9
       --ignore-metadata)

# The default: float32, the same tensors; without --grads no gradients, without labels no loss.
expect(0 "logits \\(2, 9, 101\\), loss 4.635" score --model ${TINY} --batch ${BATCH} --grads --out ${WORK}/f32.safetensors)
expect(0 "logits +F32 +\\(2, 9, 101\\).*loss +F32 +\\(\\).*grad.transformer.h.0.attn.c_attn.weight +F32 +\\(36, 108\\).*total \\(30 tensors\\)"
       info ${WORK}/f32.safetensors)
expect(0 "4 gradient tensors"
       score --model ${TINY} --adapter ${TINY}_ia3 --batch ${BATCH} --grads --out ${WORK}/ia3_f32.safetensors)
expect(0 "grad.base_model.model.transformer.h.1.mlp.c_proj.ia3_l +F32 +\\(1, 144\\).*total \\(6 tensors\\)"
       info ${WORK}/ia3_f32.safetensors)
expect(0 "logits \\(2, 9, 101\\), loss [0-9.]+\n" score --model ${TINY} --batch ${BATCH} --out ${WORK}/nograd.safetensors)
expect(0 "total \\(2 tensors\\)" info ${WORK}/nograd.safetensors)
expect(0 "logits \\(2, 9, 101\\)\n" score --model ${TINY} --batch ${BAD}/ids_only.safetensors --out ${WORK}/nolabels.safetensors)
expect(0 "logits +F32 +\\(2, 9, 101\\).*total \\(1 tensor\\)" info ${WORK}/nolabels.safetensors)

# Bad input.
set(S score --model ${TINY} --out ${WORK}/x.safetensors --batch)
expect(1 "has no tensor 'input_ids' \\(int64, \\(B, T\\)\\); it has 1 tensor\\(s\\), e.g. 'labels'" ${S} ${BAD}/labels_only.safetensors)
expect(1 "tensor 'input_ids' has dtype F32; expected I64" ${S} ${BAD}/ids_f32.safetensors)
expect(1 "tensor 'input_ids' has shape \\(9\\); expected \\(B, T\\)" ${S} ${BAD}/ids_rank1.safetensors)
expect(1 "input_ids\\[1, 4\\] = 101 is outside the vocabulary \\[0, 101\\)" ${S} ${BAD}/ids_oov.safetensors)
expect(1 "sequence length T = 25 exceeds the model's n_positions = 24" ${S} ${BAD}/ids_long.safetensors)
expect(1 "'labels' has shape \\(2, 8\\), 'input_ids' has \\(2, 9\\)" ${S} ${BAD}/labels_shape.safetensors)
expect(1 "labels\\[0, 5\\] = -1; expected -100 \\(not scored\\) or an id in \\[0, 101\\)" ${S} ${BAD}/labels_oov.safetensors)
expect(1 "--grads needs a loss, but .* has no tensor 'labels'" ${S} ${BAD}/ids_only.safetensors --grads)
expect(1 "cannot open '${WORK}/missing.safetensors'" ${S} ${WORK}/missing.safetensors)
expect(1 "cannot open '${DATA}/nope/config.json'" score --model ${DATA}/nope --batch ${BATCH} --out ${WORK}/x.safetensors)
file(MAKE_DIRECTORY ${WORK}/ia3_as_lora)  # an IA3 config over LoRA tensors
file(COPY_FILE ${TINY}_ia3/adapter_config.json ${WORK}/ia3_as_lora/adapter_config.json)
file(COPY_FILE ${TINY}_lora/adapter_model.safetensors ${WORK}/ia3_as_lora/adapter_model.safetensors)
expect(1 "missing tensor 'base_model.model.transformer.h.0.attn.c_attn.ia3_l'" score --model ${TINY}
       --adapter ${WORK}/ia3_as_lora --batch ${BATCH} --out ${WORK}/x.safetensors)
expect(2 "--dtype: must be f32 or f64, got 'f16'" ${S} ${BATCH} --dtype f16)
expect(2 "--out is required" score --model ${TINY} --batch ${BATCH})
expect(2 "--batch is required" score --model ${TINY} --out ${WORK}/x.safetensors)

# ---- generate: Hugging Face's greedy ids (tiny/generate.safetensors, tiny_lora/generate.safetensors) --------
set(P0 82,61,80,49,63)
set(P1 28,50,42,84,51)
expect(0 "usage: pemoe generate --model DIR --prompt-ids IDS \\[options\\]" generate --help)
expect(0 "^37,37,37,8,8,37,37,58,58,58,84,74\n7,73,7,73,73,73,73,73,7,73,37,54\n$" generate --model ${TINY}
       --prompt-ids ${P0} --prompt-ids ${P1} --max-new-tokens 12)
expect(0 "^37,37,37,8,8,37,37,58,58,58,84,74\n7,73,7,73,73,73,73,73,7,73,37,54\n$" generate --model ${TINY}
       --prompt-ids ${P0} --prompt-ids ${P1} --max-new-tokens 12 --no-cache --dtype f64)
# prompts of different lengths (HF: the second one left-padded with an attention mask)
expect(0 "^37,37,37,8,8,37,37,58,58,58,84,74\n10,10,26,10,74,74,74,31,31,31,31,72\n$" generate --model ${TINY}
       --prompt-ids ${P0} --prompt-ids 84,51 --max-new-tokens 12)
expect(0 "^40,74,51,51,51,74,31,31,74,31,31,31\n31,31,31,31,31,31,31,31,31,31,31,31\n$" generate --model ${TINY}
       --adapter ${TINY}_lora --prompt-ids ${P0} --prompt-ids 84,51 --max-new-tokens 12)
# a T5 decodes from the sources with a cached decoder: Hugging Face's greedy generate (t5/v11/generate.json)
expect(0 "^18,18,18,18,18,18,18,18\n2,18,14,23,19,15,7,5\n$" generate --model ${DATA}/../t5/v11
       --prompt-ids 5,17,3,30,8,1,36 --prompt-ids 22,9,14,1 --max-new-tokens 8)
expect(0 "^18,18,18,18,18,18,18,18\n2,18,14,23,19,15,7,5\n$" generate --model ${DATA}/../t5/v11
       --prompt-ids 5,17,3,30,8,1,36 --prompt-ids 22,9,14,1 --max-new-tokens 8 --no-cache --dtype f64)
expect(2 "a T5 decodes in f32 or f64" generate --model ${DATA}/../t5/v11 --prompt-ids 5,17 --dtype bf16)
# a stop token ends its sequence (it is the last id printed); the other sequence goes on
expect(0 "^37,37,37,8\n7,73,7,73,73,73,73,73,7,73,37,54\n$" generate --model ${TINY} --prompt-ids ${P0}
       --prompt-ids ${P1} --max-new-tokens 12 --eos 8)
# sampling: deterministic for a seed, the same with and without the cache, top-k 1 = greedy
expect(0 "^[0-9,]+\n$" generate --model ${TINY} --prompt-ids ${P0} --max-new-tokens 12 --temperature 0.8 --top-p 0.9
       --seed 3)
set(sampled "${out}")
expect(0 "^${sampled}$" generate --model ${TINY} --prompt-ids ${P0} --max-new-tokens 12 --temperature 0.8 --top-p 0.9
       --seed 3 --no-cache)
expect(0 "^37,37,37,8,8,37,37,58,58,58,84,74\n$" generate --model ${TINY} --prompt-ids ${P0} --max-new-tokens 12
       --top-k 1 --seed 5)
set(G generate --model ${TINY} --prompt-ids)
expect(2 "--top-p: needs a number in \\(0, 1\\], got '0'" ${G} 1,2 --top-p 0)
expect(2 "--top-p: needs a number in \\(0, 1\\], got '1.5'" ${G} 1,2 --top-p 1.5)
expect(2 "--temperature: needs a number > 0, got '0'" ${G} 1,2 --temperature 0)
expect(2 "--top-k: needs an integer >= 0, got '-1'" ${G} 1,2 --top-k -1)
expect(2 "--prompt-ids: '1,x' is not a comma-separated list of token ids \\('x' is not an integer >= 0\\)" ${G} 1,x)
expect(2 "--prompt-ids is required" generate --model ${TINY})
expect(2 "unexpected argument '3,4'" ${G} 1,2 3,4)
expect(1 "prompt 0 token 1 is id 101, outside the vocabulary \\[0, 101\\)" ${G} 1,101)
expect(1 "the prompt \\(5 tokens\\) \\+ max_new_tokens \\(20\\) = 25 exceeds the model's n_positions = 24" ${G} ${P0})
expect(1 "eos token id 101 is outside the vocabulary" ${G} 1,2 --eos 101)
expect(1 "cannot open '${DATA}/nope/config.json'" generate --model ${DATA}/nope --prompt-ids 1,2)
