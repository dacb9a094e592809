# FindPCRE2: libpcre2-dev from Debian, through pkg-config. Defines mg::pcre2.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::pcre2 libpcre2-8 libpcre2-dev)
set(PCRE2_FOUND TRUE)
