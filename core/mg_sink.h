/* mg_sink: local destinations that print what would be sent — exposition
 * lines (`name{labels} value timestamp_ms`) on standard output or appended
 * to a file — so a newcomer sees data flow without a receiver. Writes are
 * asynchronous (uv_fs_write), one at a time, in order. */
#ifndef MG_SINK_H
#define MG_SINK_H

#include <stddef.h>
#include <uv.h>

#include "mg_buf.h"

typedef struct mg_sink mg_sink_t;

/* path NULL: standard output. Opening a file happens here (start-up). */
mg_sink_t *mg_sink_new(uv_loop_t *loop, const char *path, int *err);
/* Render an uncompressed WriteRequest body as text and queue the write.
 * Returns the number of samples rendered, or a negative mg_err (MG_EPARSE
 * for a body that does not decode, MG_EFULL when more than max_pending
 * bytes wait for the disk/terminal: the batch is dropped). */
int mg_sink_write(mg_sink_t *s, const void *body, size_t len);
/* Format one WriteRequest as exposition text (shared with `moongate test`). */
int mg_sink_format(const void *body, size_t len, mg_buf_t *out, size_t *nsamples);
/* Bytes queued and not yet written. */
size_t mg_sink_pending(const mg_sink_t *s);
/* Finish pending writes, close, free. */
void mg_sink_free(mg_sink_t *s);

#endif
