# Smoke test of examples/finetune_t5.cpp (ctest "examples: T5 fine-tuning"): stage 1 pretrains a tiny T5 for a
# few dozen steps, stage 2 fine-tunes it with every method for a few steps. Checks: the program succeeds,
# writes the Hugging Face directory, the table, the metrics and the plots (routing and expert load for MoV and
# MoLoRA), and every training loss decreases. The adapters' rates are raised above the recipe's 3e-4 so that
# a few steps show a decrease. One thread: the model is tiny, and OpenMP threads spinning beside the other ctest
# jobs cost more than they bring.
#   cmake -DEXE=<pemoe_finetune_t5> -DWORK=<dir> -P t5_smoke.cmake
foreach(_v EXE WORK)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "t5_smoke.cmake: -D${_v}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
include(${CMAKE_CURRENT_LIST_DIR}/smoke_helpers.cmake)

run_example(${CMAKE_COMMAND} -E env OMP_NUM_THREADS=1
            ${EXE} --out ${WORK} --pretrain-steps 40 --pretrain-lr 3e-3 --d-model 32 --d-kv 8 --heads 2 --d-ff 48
            --layers 1 --text-window 24 --steps 24 --batch 8 --train-per-task 100 --eval-per-task 4
            --eval-every 12 --max-new-tokens 4 --experts 3 --lr full=3e-3,ia3=3e-2,mov=3e-2,molora=1e-2
            --progress off)
expect_files(${WORK}/pretrained/config.json ${WORK}/pretrained/model.safetensors ${WORK}/pretrained/metrics.csv
             ${WORK}/pretrained/loss.png ${WORK}/results.md ${WORK}/results.csv ${WORK}/loss_train.png
             ${WORK}/loss_eval.png)
expect_loss_decreases(${WORK}/pretrained/metrics.csv)
file(READ ${WORK}/results.md _table)
foreach(_m base full ia3 mov molora)
  if(NOT _table MATCHES "\\| ${_m} \\|")
    message(FATAL_ERROR "results.md has no row for ${_m}:\n${_table}")
  endif()
endforeach()
foreach(_m full ia3 mov molora)
  expect_files(${WORK}/${_m}/metrics.csv)
  expect_loss_decreases(${WORK}/${_m}/metrics.csv)
endforeach()
foreach(_m mov molora)
  expect_files(${WORK}/${_m}/routing.png ${WORK}/${_m}/routing.csv ${WORK}/${_m}/expert_load.png)
endforeach()
