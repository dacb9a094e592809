# FindLuaJIT: libluajit-5.1-dev from Debian, through pkg-config. Defines mg::luajit.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::luajit luajit libluajit-5.1-dev)
set(LuaJIT_FOUND TRUE)
