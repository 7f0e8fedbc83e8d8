# tensorrt_headers_major(<include dir> <out var>): the major version that <include dir>/NvInferVersion.h declares.
# TensorRT 10.11+ defines TRT_MAJOR_ENTERPRISE and NV_TENSORRT_MAJOR as an alias of it; older 10.x headers define
# NV_TENSORRT_MAJOR as a number (followed by a comment), so the first numeric definition of either is read.
#
# Script mode, for tests: cmake -DTENSORRT_INCLUDE_DIR=<dir> -P TensorRTVersion.cmake prints the major version.
function(tensorrt_headers_major include_dir out_var)
    file(STRINGS "${include_dir}/NvInferVersion.h" _lines
        REGEX "^#define +(TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR) +[0-9]+")
    if(NOT _lines)
        message(FATAL_ERROR "cannot read the TensorRT major version from ${include_dir}/NvInferVersion.h "
            "(no numeric TRT_MAJOR_ENTERPRISE or NV_TENSORRT_MAJOR)")
    endif()
    list(GET _lines 0 _line)
    string(REGEX REPLACE "^#define +[A-Z_]+ +([0-9]+).*$" "\\1" _major "${_line}")
    set(${out_var} "${_major}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND DEFINED TENSORRT_INCLUDE_DIR)
    tensorrt_headers_major("${TENSORRT_INCLUDE_DIR}" _major)
    message("${_major}")
endif()
