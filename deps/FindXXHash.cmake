# FindXXHash: libxxhash-dev from Debian, through pkg-config. Defines mg::xxhash.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::xxhash libxxhash libxxhash-dev)
set(XXHash_FOUND TRUE)
