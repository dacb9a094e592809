# FindSnappy: libsnappy-dev from Debian, through pkg-config. Defines mg::snappy.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::snappy snappy libsnappy-dev)
set(Snappy_FOUND TRUE)
