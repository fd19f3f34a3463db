# Smoke test of the end-to-end examples (ctest "examples: pretrain and compare"): a tiny GPT-2 is pretrained
# for a few dozen steps, then every adapter method fine-tunes it for a few steps. Checks: both programs
# succeed, write what they promise (the Hugging Face directory, metrics CSV, table, PNG plots, routing and
# expert-load plots of the MoE methods), and every training loss decreases (mean of the first rows of its
# metrics.csv > mean of the last rows).
#   cmake -DPRETRAIN=<exe> -DCOMPARE=<exe> -DWORK=<dir> -P examples_smoke.cmake
foreach(_v PRETRAIN COMPARE WORK)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "examples_smoke.cmake: -D${_v}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

include(${CMAKE_CURRENT_LIST_DIR}/smoke_helpers.cmake)  # run_example, expect_files, expect_loss_decreases

# 1. pretraining: a 2-layer model, 60 steps
run_example(${PRETRAIN} --out ${WORK}/model --steps 60 --batch 8 --seq-len 64 --n-layer 2 --n-head 2 --n-embd 64
            --train-per-task 300 --eval-every 30 --eval-blocks 8 --lr 3e-3 --warmup 5 --progress off)
expect_files(${WORK}/model/config.json ${WORK}/model/model.safetensors ${WORK}/model/metrics.csv
             ${WORK}/model/loss.png ${WORK}/model/loss.csv)
expect_loss_decreases(${WORK}/model/metrics.csv)

# 2. every method, 24 steps each
run_example(${COMPARE} --model ${WORK}/model --out ${WORK}/compare --steps 24 --batch 8 --warmup 2
            --train-per-task 200 --eval-per-task 6 --eval-every 12 --max-new-tokens 6 --progress off)
expect_files(${WORK}/compare/results.md ${WORK}/compare/results.csv ${WORK}/compare/loss_train.png
             ${WORK}/compare/loss_eval.png)
foreach(_m full lora ia3 mov molora sparse mpoe)
  expect_files(${WORK}/compare/${_m}/metrics.csv)
  expect_loss_decreases(${WORK}/compare/${_m}/metrics.csv)
  file(READ ${WORK}/compare/results.md _table)
  if(NOT _table MATCHES "\\| ${_m} \\|")
    message(FATAL_ERROR "results.md has no row for ${_m}:\n${_table}")
  endif()
endforeach()
foreach(_m mov molora sparse mpoe)
  expect_files(${WORK}/compare/${_m}/routing.png ${WORK}/compare/${_m}/routing.csv
               ${WORK}/compare/${_m}/expert_load.png)
endforeach()

# 3. dynamic data mixing against uniform over two seeds: per-run weights and distances, the mean ± sd table
run_example(${COMPARE} --model ${WORK}/model --out ${WORK}/mixing --methods sparse --mixing uniform,gate_load
            --seeds 1,2 --steps 8 --batch 8 --warmup 2 --mix-interval 3 --mix-eval-batches 1
            --train-per-task 100 --eval-per-task 4 --eval-every 0 --max-new-tokens 4 --progress off)
foreach(_s 1 2)
  expect_files(${WORK}/mixing/sparse_gate_load_s${_s}/mixing_weights.png
               ${WORK}/mixing/sparse_gate_load_s${_s}/mixing_weights.csv
               ${WORK}/mixing/sparse_gate_load_s${_s}/gate_load_distance.png
               ${WORK}/mixing/sparse_uniform_s${_s}/metrics.csv)
  file(STRINGS ${WORK}/mixing/sparse_gate_load_s${_s}/mixing_weights.csv _rows)
  list(LENGTH _rows _n)
  if(NOT _n EQUAL 4)  # header, step 0, updates at steps 3 and 6
    message(FATAL_ERROR "mixing_weights.csv of seed ${_s} has ${_n} lines, expected 4:\n${_rows}")
  endif()
endforeach()
file(READ ${WORK}/mixing/results.md _table)
if(NOT _table MATCHES "\\| sparse \\| gate_load \\|[^\n]+±" OR NOT _table MATCHES "\\| sparse \\| uniform \\|")
  message(FATAL_ERROR "results.md has no mean ± sd rows for both policies:\n${_table}")
endif()
