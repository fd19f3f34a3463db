# ctest script (cmake -P): `pemoe train` with dynamic data mixing (data.mixing) on a tiny byte-level GPT-2
# with top-1 LoRA experts: the mixing weights are written (mixing_weights.csv/.png, every row sums to 1 and
# stays at or above c/|D|), the gate-load distance matrix at the end (gate_load_distance.csv/.png); a run
# stopped and resumed gives the same adapter bytes and the same weights as an uninterrupted one; baseline
# policies run; config mistakes are one-line usage errors naming the key.
#   -DPEMOE=<pemoe binary> -DPRETRAIN=<pemoe_pretrain_gpt2 binary> -DWORK=<scratch dir>
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

include(${CMAKE_CURRENT_LIST_DIR}/cli_expect.cmake)  # expect(<rc> <regex> args...)

tiny_model(${WORK}/m)

# write_config(<file> <output dir> <adapter json> <mixing json>)
function(write_config file outdir adapter mixing)
  file(WRITE ${file} "{
  \"model\": \"${WORK}/m\", \"output_dir\": \"${outdir}\", \"seed\": 3,
  \"adapter\": ${adapter},
  \"data\": {\"train\": [{\"tasks\": [\"add\", \"reverse\", \"sort\"], \"per_task\": 40}],
           \"eval\": [{\"tasks\": [\"add\"], \"per_task\": 4}], \"max_length\": 64, \"max_new_tokens\": 4,
           \"mixing\": ${mixing}},
  \"optimizer\": {\"name\": \"adamw\", \"lr\": 5e-3},
  \"steps\": 8, \"batch_size\": 4, \"eval_every\": 4, \"log_every\": 2,
  \"checkpoint\": {\"every\": 3}, \"resume\": true
}
")
endfunction()
set(sparse "{\"type\": \"sparse\", \"r\": 2, \"experts\": 3, \"top_k\": 1}")
set(gate "{\"policy\": \"gate_load\", \"interval\": 2, \"eval_batches\": 2, \"c\": 0.1, \"freeze_routers\": false}")

# 1. config mistakes
write_config(${WORK}/bad_policy.json ${WORK}/bad "${sparse}" "{\"policy\": \"gate_lod\"}")
expect(2 "'data.mixing.policy' is \"gate_lod\"; allowed values: .*gate_load" train ${WORK}/bad_policy.json)
write_config(${WORK}/bad_eta.json ${WORK}/bad "${sparse}" "{\"eta\": -1}")
expect(2 "'data.mixing.eta'" train ${WORK}/bad_eta.json)
write_config(${WORK}/bad_key.json ${WORK}/bad "${sparse}" "{\"intervall\": 2}")
expect(2 "unknown key 'data.mixing.intervall' \\(did you mean 'data.mixing.interval'\\?\\)" train ${WORK}/bad_key.json)
write_config(${WORK}/bad_name.json ${WORK}/bad "${sparse}" "{\"policy\": \"static\", \"initial_weights\": {\"ad\": 1}}")
expect(2 "'data.mixing.initial_weights.ad' is not a dataset; allowed: add, reverse, sort" train ${WORK}/bad_name.json)
write_config(${WORK}/bad_router.json ${WORK}/bad "{\"type\": \"lora\", \"r\": 2}" "{\"policy\": \"gate_load\"}")
expect(2 "\"gate_load\" but adapter type \"lora\" has no router" train ${WORK}/bad_router.json)

# 2. gate-load mixing: uninterrupted vs stopped at step 3 and resumed
write_config(${WORK}/full.json ${WORK}/full "${sparse}" "${gate}")
write_config(${WORK}/resumed.json ${WORK}/resumed "${sparse}" "${gate}")
expect(0 "data.mixing: policy gate_load, every 2 steps.*saved to" train ${WORK}/full.json --progress off)
expect(0 "stopped at step 3 of 8" train ${WORK}/resumed.json --stop-after 3 --progress off)
expect(0 "resumed from .*checkpoint-3.*saved to" train ${WORK}/resumed.json --progress off)
foreach(f adapter_model.safetensors mixing_weights.csv gate_load_distance.csv)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/full/${f} ${WORK}/resumed/${f}
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "${f}: the resumed run differs from the uninterrupted one")
  endif()
endforeach()
foreach(f mixing_weights.png gate_load_distance.png)
  if(NOT EXISTS ${WORK}/full/${f})
    message(FATAL_ERROR "pemoe train did not write ${f}")
  endif()
endforeach()
# rows: step 0 and the updates at steps 2, 4, 6; each sums to 1 and stays >= c/|D| = 0.1/3
file(STRINGS ${WORK}/full/mixing_weights.csv rows)
list(LENGTH rows n)
if(NOT n EQUAL 5)
  message(FATAL_ERROR "mixing_weights.csv has ${n} lines, expected a header and 4 rows:\n${rows}")
endif()
list(POP_FRONT rows header)
if(NOT header STREQUAL "step,add,reverse,sort")
  message(FATAL_ERROR "mixing_weights.csv header: ${header}")
endif()
set(changed OFF)
foreach(row IN LISTS rows)
  string(REPLACE "," ";" f "${row}")
  list(POP_FRONT f step)
  math(EXPR sum_1e6 "0")
  foreach(w IN LISTS f)
    # cmake has no floating point: compare as text-scaled integers (weights in (0, 1), 17 digits)
    string(REGEX MATCH "^0\\.([0-9]+)" m "${w}")
    set(fraction "${CMAKE_MATCH_1}")  # before another MATCHES overwrites it
    if(NOT m)
      message(FATAL_ERROR "weight '${w}' in row '${row}' is not in (0, 1)")
    endif()
    string(SUBSTRING "${fraction}000000" 0 6 digits)
    math(EXPR sum_1e6 "${sum_1e6} + 1${digits} - 1000000")
    if(digits LESS 033333)
      message(FATAL_ERROR "weight '${w}' in row '${row}' is below c/|D| = 0.0333")
    endif()
    if(NOT digits STREQUAL "333333")
      set(changed ON)
    endif()
  endforeach()
  if(sum_1e6 LESS 999997 OR sum_1e6 GREATER 1000000)
    message(FATAL_ERROR "row '${row}' does not sum to 1 (${sum_1e6} millionths)")
  endif()
endforeach()
if(NOT changed)
  message(FATAL_ERROR "gate_load mixing never moved the weights off uniform:\n${rows}")
endif()

# 3. baseline policies run and write their weights (no gate loads needed: a LoRA model for sequential)
write_config(${WORK}/seq.json ${WORK}/seq "{\"type\": \"lora\", \"r\": 2}" "{\"policy\": \"sequential\", \"interval\": 3}")
expect(0 "policy sequential.*saved to" train ${WORK}/seq.json --progress off)
file(STRINGS ${WORK}/seq/mixing_weights.csv seq_rows)
list(GET seq_rows 1 r0)
list(GET seq_rows 2 r1)
if(NOT r0 STREQUAL "0,1,0,0" OR NOT r1 STREQUAL "3,0,1,0")
  message(FATAL_ERROR "sequential: rows '${r0}', '${r1}', expected '0,1,0,0' and '3,0,1,0'")
endif()
write_config(${WORK}/rnd.json ${WORK}/rnd "${sparse}" "{\"policy\": \"random\", \"interval\": 4, \"freeze_routers\": true}")
expect(0 "router tensors frozen.*policy random.*saved to" train ${WORK}/rnd.json --progress off)
