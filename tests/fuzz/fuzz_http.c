/* fuzz_http: HTTP/1.1 messages through mg_http, mostly responses as the
 * client sees them (headers, chunked, Content-Length, read-until-close,
 * gzip). Input: byte 0 picks kind, flags and limits, byte 1 the feed step,
 * the rest is the stream. Checks the parser's promises, not just crashes. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_http.h"

#define MAX_MESSAGES 16

#define check(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "fuzz_http: check failed: %s\n", #cond);               \
      abort();                                                               \
    }                                                                        \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t mode = data[0];
  size_t step = 1 + (size_t)data[1] * 7;
  const char *s = (const char *)data + 2;
  size_t n = size - 2;
  mg_http_kind_t kind = (mode & 0x1) && !(mode & 0x80) ? MG_HTTP_REQUEST : MG_HTTP_RESPONSE;
  unsigned flags = ((mode & 0x2) ? MG_HTTP_GUNZIP : 0) | ((mode & 0x4) ? MG_HTTP_HEAD_RESPONSE : 0);
  size_t max_body = (mode & 0x8) ? 100 : 1u << 20;
  size_t max_header = (mode & 0x10) ? 200 : 8192;

  mg_http_parser_t *p = mg_http_parser_new(kind);
  mg_buf_t body;
  mg_buf_init(&body, 0);
  if (!p) return 0;
  mg_http_parser_reset(p, &body, max_body, max_header, flags);
  size_t off = 0;
  int messages = 0, rc = MG_HTTP_MORE;
  while (off < n && messages < MAX_MESSAGES) {
    size_t len = n - off < step ? n - off : step, used = 0;
    rc = mg_http_parser_feed(p, s + off, len, &used);
    check(used <= len);
    check(body.len <= max_body);
    off += used;
    if (rc < 0) break;
    if (rc == MG_HTTP_COMPLETE) {
      /* A complete message answers every accessor consistently. */
      check(mg_http_parser_headers_done(p));
      if (kind == MG_HTTP_RESPONSE) check(mg_http_parser_status(p) >= 100 && mg_http_parser_status(p) <= 999);
      else check(mg_http_parser_method(p) != NULL && mg_http_parser_url(p).n > 0);
      const char *cl = mg_http_parser_header(p, "content-length");
      if (cl && !(flags & (MG_HTTP_GUNZIP | MG_HTTP_HEAD_RESPONSE)) && !mg_http_parser_header(p, "transfer-encoding") &&
          kind == MG_HTTP_REQUEST)
        check(strtoull(cl, NULL, 10) == body.len);
      if (body.data) check(body.data[body.len] == '\0');
      messages++;
      mg_http_parser_reset(p, &body, max_body, max_header, flags);
    }
  }
  if (rc == MG_HTTP_MORE && off == n) rc = mg_http_parser_finish(p);
  if (rc < 0) {
    check(rc == MG_EHTTP || rc == MG_ETOOBIG || rc == MG_EGZIP || rc == MG_ENOMEM);
    check(mg_http_parser_error(p)[0] != '\0');
  }
  check(body.len <= max_body);
  mg_http_parser_free(p);
  mg_buf_cleanup(&body);
  return 0;
}
