# ctest script (cmake -P): `pemoe train CONFIG.json` and `pemoe eval` on a tiny byte-level GPT-2 made by the
# pretraining example: config mistakes are one-line usage errors naming the key and the allowed keys or
# values; 3 steps + stop (--stop-after) + resume + 3 steps gives the same adapter bytes and metrics as 6
# uninterrupted steps; eval prints the held-out loss.
#   -DPEMOE=<pemoe binary> -DPRETRAIN=<pemoe_pretrain_gpt2 binary> -DWORK=<scratch dir>
#   -DHAVE_DNNL=<ON|OFF: the binary has the oneDNN fast path>
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

include(${CMAKE_CURRENT_LIST_DIR}/cli_expect.cmake)  # expect(<rc> <regex> args...)

# 1. a tiny byte-level model (2 layers, width 32, 3 steps of pretraining)
tiny_model(${WORK}/m)

# write_config(<file> <output dir> <adapter json> [<extra top-level json>])
function(write_config file outdir adapter)
  set(extra "")
  if(ARGC GREATER 3)
    set(extra "${ARGV3}, ")
  endif()
  file(WRITE ${file} "{
  \"model\": \"${WORK}/m\", \"output_dir\": \"${outdir}\", \"seed\": 7, ${extra}
  \"adapter\": ${adapter},
  \"data\": {\"train\": [{\"tasks\": [\"add\", \"reverse\"], \"per_task\": 40}],
           \"eval\": [{\"tasks\": [\"add\"], \"per_task\": 4}], \"max_length\": 64, \"max_new_tokens\": 6},
  \"optimizer\": {\"name\": \"adamw\", \"lr\": 2e-3},
  \"schedule\": {\"kind\": \"cosine\", \"warmup_steps\": 1},
  \"steps\": 6, \"batch_size\": 4, \"eval_every\": 3, \"log_every\": 1,
  \"checkpoint\": {\"every\": 3, \"keep\": 2}, \"resume\": true
}
")
endfunction()
set(molora "{\"type\": \"molora\", \"r\": 2, \"experts\": 2, \"target_modules\": [\"c_attn\", \"c_fc\"]}")

# 2. mistakes in the config: usage errors (exit 2) naming the key and what is allowed
write_config(${WORK}/bad_key.json ${WORK}/bad "{\"type\": \"molora\", \"rnak\": 2}")
expect(2 "unknown key 'adapter.rnak'.*allowed keys of 'adapter' \\(type molora\\): type, r, alpha, dropout, experts"
       train ${WORK}/bad_key.json)
write_config(${WORK}/bad_top.json ${WORK}/bad "${molora}" "\"stesp\": 3")
expect(2 "unknown key 'stesp' \\(did you mean 'steps'\\?\\)" train ${WORK}/bad_top.json)
write_config(${WORK}/bad_type.json ${WORK}/bad "{\"type\": \"loar\"}")
expect(2 "'adapter.type' is \"loar\"; allowed values: full, lora, ia3, mov, molora, sparse, mpoe"
       train ${WORK}/bad_type.json)
write_config(${WORK}/bad_value.json ${WORK}/bad "{\"type\": \"lora\", \"dropout\": 1.5}")
expect(2 "'adapter.dropout' is 1.5; allowed: a number in \\[0, 1\\)" eval ${WORK}/bad_value.json)
expect(1 "cannot open" train ${WORK}/missing.json)

# 3. 6 steps uninterrupted == 3 steps, stop, resume, 3 more: same adapter bytes, same metrics
write_config(${WORK}/full.json ${WORK}/full "${molora}")
write_config(${WORK}/resumed.json ${WORK}/resumed "${molora}")
expect(0 "saved to .*eval loss [0-9.]+" train ${WORK}/full.json --progress lines)
expect(0 "stopped at step 3 of 6" train ${WORK}/resumed.json --stop-after 3 --progress lines)
if(EXISTS ${WORK}/resumed/adapter_model.safetensors)
  message(FATAL_ERROR "--stop-after 3 wrote the adapter")
endif()
expect(0 "resumed from .*checkpoint-3 \\(step 3\\).*saved to" train ${WORK}/resumed.json --progress lines)
foreach(f adapter_model.safetensors adapter_config.json)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/full/${f} ${WORK}/resumed/${f}
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "${f}: the resumed run differs from the uninterrupted one")
  endif()
endforeach()
# metrics rows without the tokens_per_s column (wall-clock) must be equal, step for step
foreach(run full resumed)
  file(STRINGS ${WORK}/${run}/metrics.csv lines)
  set(rows_${run} "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^([^,]*,[^,]*,[^,]*),[^,]*," "\\1,," line "${line}")
    list(APPEND rows_${run} "${line}")
  endforeach()
endforeach()
list(LENGTH rows_full n)
if(NOT n EQUAL 7 OR NOT rows_full STREQUAL rows_resumed)
  message(FATAL_ERROR "metrics differ:\n${rows_full}\nvs\n${rows_resumed}")
endif()
foreach(f eval.json loss.csv metrics.csv)
  if(NOT EXISTS ${WORK}/full/${f})
    message(FATAL_ERROR "pemoe train did not write ${f}")
  endif()
endforeach()

# 3b. MPOE resumes exactly too (its gradient mask's draws are replayed from the checkpoint)
set(mpoe "{\"type\": \"mpoe\", \"experts\": 2, \"mask_p\": 0.5}")
write_config(${WORK}/mpoe_full.json ${WORK}/mpoe_full "${mpoe}")
write_config(${WORK}/mpoe_resumed.json ${WORK}/mpoe_resumed "${mpoe}")
expect(0 "saved to" train ${WORK}/mpoe_full.json --progress off)
expect(0 "stopped at step 3 of 6" train ${WORK}/mpoe_resumed.json --stop-after 3 --progress off)
expect(0 "resumed from .*checkpoint-3 \\(step 3\\).*saved to" train ${WORK}/mpoe_resumed.json --progress off)
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/mpoe_full/mpoe_model.safetensors
                        ${WORK}/mpoe_resumed/mpoe_model.safetensors RESULT_VARIABLE differ)
if(differ)
  message(FATAL_ERROR "mpoe: the resumed run's expert banks differ from the uninterrupted one's")
endif()
# 3c. ... and gives the same bits whatever else the process allocated first: another heap layout
# (glibc's top_pad, no tcache) moves every buffer malloc returns; the parameter arenas are aligned, so Eigen's
# vectorised loops peel the same way and round the same (a CI machine once differed here without it).
write_config(${WORK}/mpoe_heap.json ${WORK}/mpoe_heap "${mpoe}")
execute_process(COMMAND ${CMAKE_COMMAND} -E env "GLIBC_TUNABLES=glibc.malloc.top_pad=4096:glibc.malloc.tcache_count=0"
                        ${PEMOE} train ${WORK}/mpoe_heap.json --progress off RESULT_VARIABLE rc OUTPUT_QUIET)
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/mpoe_full/mpoe_model.safetensors
                        ${WORK}/mpoe_heap/mpoe_model.safetensors RESULT_VARIABLE differ)
if(NOT rc EQUAL 0 OR differ)
  message(FATAL_ERROR "mpoe: another heap layout gives other weights (exit code ${rc}); a buffer that Eigen "
                      "reduces over is not aligned")
endif()

# 3d. precision: with the frozen weights packed once in f32 the run trains, evaluates and says so (the packed
# products themselves are checked against the unpacked ones in tests/dnnl/); a bad value is a usage error naming the allowed ones; without oneDNN packing is refused with the reason
write_config(${WORK}/packed.json ${WORK}/packed "${molora}" "\"precision\": {\"frozen_weights\": \"packed_f32\"}")
if(HAVE_DNNL)
  expect(0 "precision: frozen weights packed in f32, [0-9]+ MB.*saved to .*eval loss [0-9.]+" train
         ${WORK}/packed.json --progress off)
else()
  expect(2 "config 'precision': .*no oneDNN backend" train ${WORK}/packed.json --progress off)
endif()
write_config(${WORK}/bad_precision.json ${WORK}/bad "${molora}" "\"precision\": {\"frozen_weights\": \"fp16\"}")
expect(2 "'precision.frozen_weights' is \"fp16\"; allowed values: f32, packed_f32, bf16" train
       ${WORK}/bad_precision.json)

# 4. eval: the saved adapter (default: output_dir), another directory, the base model
expect(0 "add +4 examples +loss [0-9.]+ +exact match.*eval loss [0-9.]+" eval ${WORK}/full.json
       --out ${WORK}/eval_out.json)
expect(0 "eval loss [0-9.]+" eval ${WORK}/full.json --adapter ${WORK}/resumed)
expect(0 "base.*eval loss [0-9.]+" eval ${WORK}/full.json --base)
expect(1 "holds no trained model" eval ${WORK}/full.json --adapter ${WORK}/m/nothing)
expect(0 "routing plots: .*plots/routing.png" eval ${WORK}/full.json --plots ${WORK}/plots)
foreach(f ${WORK}/plots/routing.png ${WORK}/plots/expert_load.png ${WORK}/full/routing.png)
  if(NOT EXISTS ${f})
    message(FATAL_ERROR "no ${f}: pemoe train and pemoe eval --plots write the routing plots of a MoE adapter")
  endif()
endforeach()
file(READ ${WORK}/eval_out.json ej)
string(JSON loss GET "${ej}" loss)
file(READ ${WORK}/full/eval.json tj)
string(JSON tloss GET "${tj}" loss)
if(NOT loss STREQUAL tloss)
  message(FATAL_ERROR "pemoe eval gives loss ${loss}, pemoe train's eval.json ${tloss}")
endif()

# 5. the other adapter types train (2 steps each, no eval)
foreach(adapter "{\"type\": \"lora\", \"r\": 2}" "{\"type\": \"ia3\"}" "{\"type\": \"mov\", \"experts\": 2}"
        "{\"type\": \"sparse\", \"r\": 2, \"experts\": 2, \"top_k\": 1}" "{\"type\": \"mpoe\", \"experts\": 2}"
        "{\"type\": \"full\"}")
  string(JSON type GET "${adapter}" type)
  write_config(${WORK}/type_${type}.json ${WORK}/type_${type} "${adapter}")
  expect(0 "saved to" train ${WORK}/type_${type}.json --progress off)
  expect(0 "eval loss" eval ${WORK}/type_${type}.json)
endforeach()
