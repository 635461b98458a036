# ctest driver of one harness: fuzz a fresh copy of the committed seed corpus (the run adds
# inputs to WORK, never to the source tree) for SECONDS seconds, one process.
# -D: FUZZER (executable), SEEDS (committed corpus), WORK (scratch corpus), ARTIFACTS (prefix for
# crash / leak / timeout reproducers), DICT (optional libFuzzer dictionary), SECONDS.
foreach(v FUZZER SEEDS WORK ARTIFACTS SECONDS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${v}=... missing")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
file(GLOB seeds LIST_DIRECTORIES false ${SEEDS}/*)
if(seeds)
  file(COPY ${seeds} DESTINATION ${WORK})
endif()
set(args -max_total_time=${SECONDS} -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
         -artifact_prefix=${ARTIFACTS})
if(DICT)
  list(APPEND args -dict=${DICT})
endif()
string(JOIN " " shown ${args})
message(STATUS "${FUZZER} ${shown} ${WORK}")
execute_process(COMMAND ${FUZZER} ${args} ${WORK} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (exit status ${rc}); reproducer written with prefix ${ARTIFACTS}")
endif()
