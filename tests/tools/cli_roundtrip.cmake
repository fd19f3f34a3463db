# ctest script (cmake -P): `pemoe mpo compress` then `pemoe mpo expand` gives back the original tensors.
#   -DPEMOE=<pemoe binary> -DDATA=<tests/data/io> -DWORK=<scratch dir>
# At full bond (no --max-bond) every gauge must rebuild every tensor within 1e-5 relative (checked by
# `pemoe diff`, which also checks that names, order-independent metadata, dtypes and shapes survive);
# with a small bond the same diff must report differences (so the check can fail).
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(IN ${DATA}/tiny_model.safetensors)

function(run expected_rc)
  execute_process(COMMAND ${PEMOE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "pemoe ${ARGN}\n${out}${err}")
  if(NOT rc EQUAL expected_rc)
    message(FATAL_ERROR "pemoe ${ARGN}: exit code ${rc}, expected ${expected_rc}\n${out}${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

# Every F32/BF16 matrix, including 50x16 (modes with a 5), 63x17 (padded to factorisable sizes) and the
# BF16 gate (rebuilt in float, written back as BF16).
foreach(gauge symmetric mixed left)
  foreach(pad "" "--pad")
    set(tag ${gauge}${pad})
    run(0 mpo compress ${IN} --match "(embed|attn|mlp).*weight$" --gauge ${gauge} ${pad} --cores 5
        --out ${WORK}/c_${tag}.safetensors)
    foreach(col "tensor" "shape" "modes" "bond dims" "params" "mpo params" "rel. error" "total \\(6 tensors\\)")
      if(NOT out MATCHES "${col}")
        message(FATAL_ERROR "the compress table has no '${col}'")
      endif()
    endforeach()
    if(pad STREQUAL "--pad" AND NOT out MATCHES "\\(padded\\)")
      message(FATAL_ERROR "--pad padded no tensor")
    endif()
    run(0 info ${WORK}/c_${tag}.safetensors)
    if(NOT out MATCHES "layer.0.mlp.up.weight.mpo.core_4" OR NOT out MATCHES "pemoe.mpo/embed.weight"
       OR out MATCHES "layer.0.mlp.up.weight  ")
      message(FATAL_ERROR "the compressed file does not hold the cores and records expected")
    endif()
    run(0 mpo expand ${WORK}/c_${tag}.safetensors --out ${WORK}/e_${tag}.safetensors)
    run(0 diff ${IN} ${WORK}/e_${tag}.safetensors --rtol 1e-5)
  endforeach()
endforeach()

# Three cores, and the output file may be the input file.
file(COPY_FILE ${IN} ${WORK}/inplace.safetensors)
run(0 mpo compress ${WORK}/inplace.safetensors --match "mlp.*weight$" --cores 3 --out ${WORK}/inplace.safetensors)
run(0 mpo expand ${WORK}/inplace.safetensors --out ${WORK}/inplace.safetensors)
run(0 diff ${IN} ${WORK}/inplace.safetensors --rtol 1e-5)

# Truncated: smaller, and the diff notices.
run(0 mpo compress ${IN} --match "mlp.up.weight$" --max-bond 2 --out ${WORK}/t.safetensors)
run(0 mpo expand ${WORK}/t.safetensors --out ${WORK}/te.safetensors)
run(1 diff ${IN} ${WORK}/te.safetensors --rtol 1e-5)
if(NOT out MATCHES "DIFFERS")
  message(FATAL_ERROR "diff did not report the truncated tensors")
endif()
