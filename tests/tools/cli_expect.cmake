# Shared by the CLI tests (cmake -P scripts, variable PEMOE = the pemoe binary):
# expect(<rc> <regex the output must match> args...) runs `pemoe args...` and fails the test unless the exit
# code is <rc> and stdout + stderr match <regex>; an error (rc != 0) must be exactly one line on stderr.
function(expect expected_rc pattern)
  execute_process(COMMAND ${PEMOE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL expected_rc)
    message(FATAL_ERROR "pemoe ${ARGN}: exit code ${rc}, expected ${expected_rc}\n${out}${err}")
  endif()
  if(NOT "${out}${err}" MATCHES "${pattern}")
    message(FATAL_ERROR "pemoe ${ARGN}: output does not match '${pattern}':\n${out}${err}")
  endif()
  if(NOT expected_rc EQUAL 0)
    string(REGEX MATCHALL "\n" lines "${err}")
    list(LENGTH lines n)
    if(NOT n EQUAL 1 OR NOT out STREQUAL "")
      message(FATAL_ERROR "pemoe ${ARGN}: an error must be one line on stderr, got:\n${out}${err}")
    endif()
  endif()
  message(STATUS "ok: pemoe ${ARGN} -> ${rc}")
endfunction()

# tiny_model(<dir>) makes a tiny byte-level GPT-2 in <dir> with the pretraining example (variable PRETRAIN):
# 2 layers, width 32, 3 steps; the CLI's training tests fine-tune it.
function(tiny_model dir)
  execute_process(COMMAND ${PRETRAIN} --steps 3 --n-layer 2 --n-embd 32 --n-head 2 --seq-len 64 --eval-every 0
                          --train-per-task 50 --progress off --out ${dir}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS ${dir}/pemoe_tokenizer.json)
    message(FATAL_ERROR "pemoe_pretrain_gpt2 failed (${rc}):\n${out}${err}")
  endif()
endfunction()
