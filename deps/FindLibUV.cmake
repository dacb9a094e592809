# FindLibUV: libuv1-dev from Debian, through pkg-config. Defines mg::uv.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::uv libuv libuv1-dev)
set(LibUV_FOUND TRUE)
