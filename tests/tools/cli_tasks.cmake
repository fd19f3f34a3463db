# ctest script (cmake -P): `pemoe tasks` writes the offline task suite (data/tasks.hpp) as jsonl files with the
# requested line counts, the same bytes for the same seed, and refuses unknown tasks with a usage error.
#   -DPEMOE=<pemoe binary> -DWORK=<scratch dir>
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

include(${CMAKE_CURRENT_LIST_DIR}/cli_expect.cmake)  # expect(<rc> <regex> args...)

# check_lines(<file> <n>): the file exists and has n lines, each one JSON object with the four fields.
function(check_lines file expected)
  if(NOT EXISTS ${file})
    message(FATAL_ERROR "${file} was not written")
  endif()
  file(STRINGS ${file} lines)
  list(LENGTH lines n)
  if(NOT n EQUAL expected)
    message(FATAL_ERROR "${file}: ${n} lines, expected ${expected}")
  endif()
  foreach(line IN LISTS lines)
    foreach(key instruction input output task)
      string(JSON value ERROR_VARIABLE json_err GET "${line}" ${key})
      if(json_err)
        message(FATAL_ERROR "${file}: line '${line}' has no string \"${key}\": ${json_err}")
      endif()
    endforeach()
  endforeach()
endfunction()

expect(0 "usage: pemoe tasks --out DIR \\[options\\]" tasks --help)
expect(0 "wrote 16 files.*add +Add the numbers\\. +- +30 +7.*country_code.*total \\(8 tasks\\) +240 +56"
       tasks --out ${WORK}/all --train 30 --eval 7)
foreach(task add reverse sort upper count country_code currency_code language_code)
  check_lines(${WORK}/all/${task}.train.jsonl 30)
  check_lines(${WORK}/all/${task}.eval.jsonl 7)
endforeach()

# a chosen subset, twice with the same seed: the same bytes; another seed: other bytes
expect(0 "wrote 4 files.*upper.*count" tasks --out ${WORK}/a --tasks upper,count --train 12 --eval 5 --seed 9)
expect(0 "wrote 4 files" tasks --out ${WORK}/b --tasks upper,count --train 12 --eval 5 --seed 9)
expect(0 "wrote 4 files" tasks --out ${WORK}/c --tasks upper,count --train 12 --eval 5 --seed 10)
check_lines(${WORK}/a/upper.train.jsonl 12)
check_lines(${WORK}/a/count.eval.jsonl 5)
if(EXISTS ${WORK}/a/add.train.jsonl)
  message(FATAL_ERROR "--tasks upper,count wrote add.train.jsonl")
endif()
file(SHA256 ${WORK}/a/upper.train.jsonl ha)
file(SHA256 ${WORK}/b/upper.train.jsonl hb)
file(SHA256 ${WORK}/c/upper.train.jsonl hc)
if(NOT ha STREQUAL hb OR ha STREQUAL hc)
  message(FATAL_ERROR "upper.train.jsonl: seed 9 twice must give the same bytes and seed 10 others")
endif()

# errors: an unknown task is a usage error with a suggestion; a missing word list names the package
expect(2 "unknown task 'revers'.*did you mean 'reverse'" tasks --out ${WORK}/d --tasks upper,revers)
expect(2 "--train" tasks --out ${WORK}/d --train -3)
expect(1 "apt-get install wamerican" tasks --out ${WORK}/d --tasks sort --words ${WORK}/no_such_words)
