/* mg_wire: the remote write 1.0 wire format, encoded by hand on the hot
 * path: TimeSeries straight into a WriteRequest body (field 1 entries),
 * MetricMetadata (field 3), and the snappy block codec. Pure: no libuv, no
 * clock, no allocation except inside mg_buf. The protobuf-c code generated
 * from core/remote.proto decodes what this writes (tests, stdout sink). */
#ifndef MG_WIRE_H
#define MG_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mg_buf.h"
#include "mg_parse.h"
#include "mg_str.h"

/* Prometheus's staleness marker: a NaN with this exact bit pattern. */
#define MG_STALE_NAN_BITS 0x7ff0000000000002ULL
double mg_wire_stale_nan(void);
int mg_wire_is_stale_nan(double v);

/* Append one TimeSeries with one sample as a WriteRequest `timeseries`
 * entry. labels must be sorted by name, unique, with non-empty values (the
 * caller builds them so). Returns 0 or MG_ETOOBIG/MG_ENOMEM from the buffer. */
int mg_wire_append_series(mg_buf_t *b, const mg_label_t *labels, size_t n, double value, int64_t ts_ms);

/* Append one MetricMetadata as a WriteRequest `metadata` entry. */
int mg_wire_append_metadata(mg_buf_t *b, mg_metric_kind_t type, mg_str_t family, mg_str_t help, mg_str_t unit);

/* Snappy block format (what remote write uses; not the framing format).
 * Compress appends to out. */
int mg_wire_snappy_compress(const void *in, size_t n, mg_buf_t *out);
/* Decompress into out (appends); fails with MG_EPARSE on corrupt input and
 * MG_ETOOBIG when the decoded size would exceed out's limit. */
int mg_wire_snappy_uncompress(const void *in, size_t n, mg_buf_t *out);

/* Whether a snappy block decodes (without decoding it). */
bool mg_wire_snappy_valid(const void *in, size_t n);
/* Join snappy blocks into one block of their concatenated contents without
 * decompressing: a block is its uncompressed length followed by elements
 * whose copies reach back from the current output position, so a block's
 * elements decode the same after other output. Concatenated WriteRequest
 * bodies are one WriteRequest, so joined requests stay valid requests.
 * Blocks must be valid (mg_wire_snappy_valid); appends to out. MG_EPARSE
 * on a malformed length, MG_ETOOBIG past snappy's 4 GiB. */
int mg_wire_snappy_join(const mg_str_t *blocks, size_t n, mg_buf_t *out);

#endif
