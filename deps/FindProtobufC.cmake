# FindProtobufC: libprotobuf-c-dev from Debian, through pkg-config. Defines mg::protobufc.
include(${CMAKE_CURRENT_LIST_DIR}/FindMgPkg.cmake)
mg_find_pkg(mg::protobufc libprotobuf-c libprotobuf-c-dev)
set(ProtobufC_FOUND TRUE)
