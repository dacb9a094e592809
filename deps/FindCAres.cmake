# FindCAres: libc-ares-dev from Debian, through pkg-config. Defines mg::cares.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::cares libcares libc-ares-dev)
set(CAres_FOUND TRUE)
