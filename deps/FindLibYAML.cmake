# FindLibYAML: libyaml-dev from Debian, through pkg-config. Defines mg::yaml.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::yaml yaml-0.1 libyaml-dev)
set(LibYAML_FOUND TRUE)
