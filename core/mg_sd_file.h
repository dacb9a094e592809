/* mg_sd_file: file-based discovery, as Prometheus's file_sd_configs.
 * Options: files (list of paths ending in .json, .yml or .yaml; the last
 * path element may hold the glob characters * ? [...]) and
 * refresh_interval (default 5m). Each file holds a list of target groups
 * {targets: [host:port, ...], labels: {name: value}}; every target gets
 * its group's labels and __meta_filepath. Files are read again when their
 * directory reports a change (uv_fs_event) and every refresh_interval. A
 * file that cannot be read or parsed keeps its previous groups (logged
 * once per distinct error, reported as a failed refresh); a file gone
 * takes its targets with it. Reads are blocking but bounded (16 MiB per
 * file, 10000 files per source). */
#ifndef MG_SD_FILE_H
#define MG_SD_FILE_H

#include "mg_sd.h"

#define MG_SD_FILE_MAX_BYTES (16u << 20)
#define MG_SD_FILE_MAX_FILES 10000

extern const mg_sd_ops_t mg_sd_file_ops;

#endif
