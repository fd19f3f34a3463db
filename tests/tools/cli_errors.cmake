# ctest script (cmake -P): the `pemoe` tool's usage and runtime errors are one line on stderr with exit
# code 2 (usage) or 1 (runtime), never a crash; --help and --version work.
#   -DPEMOE=<pemoe binary> -DDATA=<tests/data/io> -DWORK=<scratch dir>
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(IN ${DATA}/tiny_model.safetensors)

include(${CMAKE_CURRENT_LIST_DIR}/cli_expect.cmake)  # expect(<rc> <regex> args...)

expect(0 "usage: pemoe <command>" --help)
expect(0 "usage: pemoe mpo <command>" mpo --help)
expect(0 "--max-bond K" mpo compress --help)
expect(0 "usage: pemoe mpo expand IN --out OUT" mpo expand --help)
expect(0 "usage: pemoe info FILE" info --help)
expect(0 "usage: pemoe diff A B \\[options\\].*--rtol R" diff -h)
expect(0 "commands:.*diff.*info.*mpo" --help)
expect(0 "^pemoe [0-9]+\\.[0-9]+\\.[0-9]+ \\(Eigen" --version)
expect(2 "missing command" )
expect(2 "unknown command 'frobnicate'" frobnicate)
expect(2 "unknown command 'mpo squash'" mpo squash)
expect(2 "missing command after 'pemoe mpo' \\(known: compress, expand" mpo)
expect(2 "unknown option '--bogus'" --bogus)
expect(2 "unknown option '--max-bnd' \\(did you mean '--max-bond'\\?\\)" mpo compress ${IN} --match a --max-bnd 3 --out x)
expect(2 "--max-bond: 1 required K missing" mpo compress ${IN} --match a --out x --max-bond)
expect(2 "--max-bond: needs an integer >= 1, got '2.5'" mpo compress ${IN} --match a --out x --max-bond 2.5)
expect(2 "--rel-cutoff: needs a number in \\[0, 1\\), got '1'" mpo compress ${IN} --match a --out x --rel-cutoff 1)
expect(2 "--gauge: must be symmetric, mixed or left, got 'up'" mpo compress ${IN} --match a --out x --gauge up)
expect(2 "--out is required" mpo compress ${IN} --match a)
expect(2 "--match is required" mpo compress ${IN} --out x)
expect(2 "IN is required" mpo compress --match a --out x)
expect(2 "unexpected argument 'extra'" mpo compress ${IN} extra --match a --out x)
expect(2 "is not a valid regular expression" mpo compress ${IN} --match "a(" --out x)
expect(2 "--cores: needs an integer in \\[1, 32\\], got '0'" mpo compress ${IN} --match a --out x --cores 0)
expect(2 "--match: At Most 1 required but received 2" mpo compress ${IN} --match a --match b --out x)
expect(2 "B is required" diff ${IN})
expect(2 "--rtol: needs a number in \\[0, inf\\), got '-1'" diff ${IN} ${IN} --rtol -1)
expect(2 "pad was given a disallowed flag override" mpo compress ${IN} --match a --pad=yes --out x)
expect(1 "--match 'nothing' matches none of the 10 tensors of .*'embed.weight'" mpo compress ${IN} --match nothing
       --out ${WORK}/x.safetensors)
expect(1 "matches 2 tensors that are not 2-d float matrices.*'norm.weight \\(16\\) F32'" mpo compress ${IN}
       --match "norm|position" --out ${WORK}/x.safetensors)
expect(1 "cannot open '${WORK}/missing.safetensors' for reading" mpo compress ${WORK}/missing.safetensors
       --match a --out ${WORK}/x.safetensors)
expect(1 "header length .* is larger than" mpo compress ${DATA}/python_mixed.json --match a
       --out ${WORK}/x.safetensors)
expect(1 "cannot open '${WORK}/no/such/dir/x.safetensors.tmp-pemoe' for writing" mpo compress ${IN} --match attn.weight
       --out ${WORK}/no/such/dir/x.safetensors)
expect(1 "has no MPO-compressed tensors" mpo expand ${IN} --out ${WORK}/x.safetensors)
expect(1 "safetensors '.*python_mixed.json'" info ${DATA}/python_mixed.json)
expect(1 "cannot read '${WORK}': it is a directory" info ${WORK})

# A compressed file whose record names a core that is missing (written by make_fixtures.py).
expect(1 "tensor 'w' has 2 MPO cores but 'w.mpo.core_1' is missing" mpo expand ${DATA}/mpo_missing_core.safetensors
       --out ${WORK}/x.safetensors)
expect(1 "__metadata__ 'pemoe.mpo/v' is not a valid MPO record" mpo expand ${DATA}/mpo_bad_record.safetensors
       --out ${WORK}/x.safetensors)
