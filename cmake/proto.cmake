# commerce_proto_library(<target> ROOT <dir> PROTOS <files relative to ROOT> [DEPS <targets>])
# runs protoc-c at build time; generated code lands in ${CMAKE_BINARY_DIR}/gen, never
# in the source tree. import paths: every ROOT plus the system well-known types.
set(COMMERCE_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
set(COMMERCE_PROTO_PATHS
    -I${CMAKE_SOURCE_DIR}/proto/third_party
    -I${CMAKE_SOURCE_DIR}/proto
    -I${CMAKE_SOURCE_DIR}/tests/proto
    -I/usr/include)

function(commerce_proto_library target)
  cmake_parse_arguments(P "" "ROOT" "PROTOS;DEPS" ${ARGN})
  set(srcs)
  set(hdrs)
  foreach(p ${P_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" base ${p})
    set(c ${COMMERCE_GEN_DIR}/${base}.pb-c.c)
    set(h ${COMMERCE_GEN_DIR}/${base}.pb-c.h)
    add_custom_command(
      OUTPUT ${c} ${h}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${COMMERCE_GEN_DIR}
      COMMAND ${PROTOC_C} ${COMMERCE_PROTO_PATHS} --c_out=${COMMERCE_GEN_DIR} ${P_ROOT}/${p}
      DEPENDS ${P_ROOT}/${p}
      COMMENT "protoc-c ${p}"
      VERBATIM)
    list(APPEND srcs ${c})
    list(APPEND hdrs ${h})
  endforeach()
  add_library(${target} STATIC ${srcs})
  # generated code is not ours to keep warning-free
  target_compile_options(${target} PRIVATE -w)
  target_include_directories(${target} PUBLIC ${COMMERCE_GEN_DIR})
  target_link_libraries(${target} PUBLIC PkgConfig::PROTOBUFC ${P_DEPS})
endfunction()

# python message modules for the interop tests (grpcio client)
function(commerce_proto_python target)
  cmake_parse_arguments(P "" "ROOT" "PROTOS" ${ARGN})
  set(outs)
  set(pydir ${COMMERCE_GEN_DIR}/python)
  foreach(p ${P_PROTOS})
    string(REGEX REPLACE "\\.proto$" "_pb2.py" py ${p})
    add_custom_command(
      OUTPUT ${pydir}/${py}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${pydir}
      COMMAND ${PROTOC} ${COMMERCE_PROTO_PATHS} --python_out=${pydir} ${P_ROOT}/${p}
      DEPENDS ${P_ROOT}/${p}
      VERBATIM)
    list(APPEND outs ${pydir}/${py})
  endforeach()
  add_custom_target(${target} ALL DEPENDS ${outs})
endfunction()
