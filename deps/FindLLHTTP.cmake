# FindLLHTTP: Debian's node-llhttp ships llhttp's generated C sources and header
# under /usr/share (no shared library), so we compile them into a static
# library here. Defines mg::llhttp.
if(TARGET mg::llhttp)
  return()
endif()
find_path(LLHTTP_INCLUDE_DIR llhttp.h PATHS /usr/share/include/llhttp /usr/include/llhttp NO_DEFAULT_PATH)
find_path(LLHTTP_SRC_DIR llhttp.c PATHS /usr/share/llhttp NO_DEFAULT_PATH)
if(NOT LLHTTP_INCLUDE_DIR OR NOT LLHTTP_SRC_DIR)
  message(FATAL_ERROR "llhttp sources not found: apt-get install node-llhttp")
endif()
add_library(mg_llhttp STATIC ${LLHTTP_SRC_DIR}/llhttp.c ${LLHTTP_SRC_DIR}/api.c ${LLHTTP_SRC_DIR}/http.c)
target_include_directories(mg_llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
# Generated code: not ours to warn about.
target_compile_options(mg_llhttp PRIVATE -w)
set_target_properties(mg_llhttp PROPERTIES POSITION_INDEPENDENT_CODE ON)
add_library(mg::llhttp ALIAS mg_llhttp)
set(LLHTTP_FOUND TRUE)
