/* mg_http: llhttp wrapper. Keeps the start line and headers of one message
 * in a single buffer addressed by offsets, streams the body into the
 * caller's buffer (inflating gzip on the fly) and pauses llhttp at the end of
 * each message so keep-alive and pipelining stay under the caller's control. */
#include "mg_http.h"

#include <llhttp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "mg_err.h"
#include "mg_mem.h"

#define DEFAULT_MAX_HEADER_BYTES (64 * 1024)
/* Room asked of the body buffer per inflate step when it is nearly full. */
#define INFLATE_STEP (16 * 1024)

struct mg_http_parser {
  llhttp_t llh;
  mg_http_kind_t kind;
  unsigned flags;
  size_t max_header_bytes;
  /* "url\0" (requests) followed by "name\0value\0" pairs; idx holds offsets
   * so the buffer may move while it grows. */
  mg_buf_t hdrs;
  size_t url_len, head_bytes, raw_head_bytes;
  struct {
    size_t name, value;
  } idx[MG_HTTP_MAX_HEADERS];
  size_t nhdrs;
  bool in_field, started, headers_done, complete;
  mg_buf_t *body;
  size_t max_body;
  bool gzip, gz_end, gz_seen, z_ready;
  z_stream z;
  int err;
  char detail[160];
};

static const char *kind_name(const mg_http_parser_t *p) {
  return p->kind == MG_HTTP_REQUEST ? "request" : "response";
}

/* Records the first error; llhttp then stops with HPE_USER or a callback error. */
static int fail(mg_http_parser_t *p, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(mg_http_parser_t *p, int err, const char *fmt, ...) {
  if (!p->err) {
    p->err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof p->detail, fmt, ap);
    va_end(ap);
  }
  return HPE_USER;
}

static mg_http_parser_t *from(llhttp_t *llh) { return (mg_http_parser_t *)llh->data; }

static int store(mg_http_parser_t *p, const char *at, size_t n) {
  p->head_bytes += n;
  if (p->head_bytes > p->max_header_bytes)
    return fail(p, MG_ETOOBIG, "%s headers over limit (%zu bytes)", kind_name(p), p->max_header_bytes);
  if (mg_buf_append(&p->hdrs, at, n) != 0) return fail(p, MG_ENOMEM, "out of memory for headers");
  return 0;
}

static void clear_message(mg_http_parser_t *p) {
  mg_buf_reset(&p->hdrs);
  p->url_len = p->head_bytes = p->nhdrs = 0;
  p->in_field = p->headers_done = p->complete = false;
  p->gzip = p->gz_end = p->gz_seen = false;
}

static int on_message_begin(llhttp_t *llh) {
  mg_http_parser_t *p = from(llh);
  clear_message(p);
  p->started = true;
  return 0;
}

static int on_url(llhttp_t *llh, const char *at, size_t n) {
  mg_http_parser_t *p = from(llh);
  p->url_len += n;
  return store(p, at, n);
}

static int on_url_complete(llhttp_t *llh) { return store(from(llh), "", 1); }

/* The reason phrase is not kept, but it counts against the header limit. */
static int on_status(llhttp_t *llh, const char *at, size_t n) {
  mg_http_parser_t *p = from(llh);
  p->head_bytes += n;
  if (p->head_bytes > p->max_header_bytes)
    return fail(p, MG_ETOOBIG, "%s headers over limit (%zu bytes)", kind_name(p), p->max_header_bytes);
  return 0;
}

/* A field name may arrive in several pieces; the first one opens the entry. */
static int begin_field(mg_http_parser_t *p) {
  if (p->in_field) return 0;
  if (p->nhdrs == MG_HTTP_MAX_HEADERS)
    return fail(p, MG_ETOOBIG, "%s has more than %d headers", kind_name(p), MG_HTTP_MAX_HEADERS);
  p->idx[p->nhdrs].name = p->hdrs.len;
  p->in_field = true;
  return 0;
}

static int on_header_field(llhttp_t *llh, const char *at, size_t n) {
  mg_http_parser_t *p = from(llh);
  int rc = begin_field(p);
  return rc ? rc : store(p, at, n);
}

static int on_header_field_complete(llhttp_t *llh) {
  mg_http_parser_t *p = from(llh);
  int rc = begin_field(p);
  if (rc == 0) rc = store(p, "", 1);
  if (rc) return rc;
  p->in_field = false;
  p->idx[p->nhdrs].value = p->hdrs.len;
  return 0;
}

static int on_header_value(llhttp_t *llh, const char *at, size_t n) { return store(from(llh), at, n); }

static int on_header_value_complete(llhttp_t *llh) {
  mg_http_parser_t *p = from(llh);
  /* llhttp skips leading whitespace only; trailing OWS is not part of the value. */
  size_t start = p->idx[p->nhdrs].value;
  while (p->hdrs.len > start && (p->hdrs.data[p->hdrs.len - 1] == ' ' || p->hdrs.data[p->hdrs.len - 1] == '\t'))
    p->hdrs.len--;
  int rc = store(p, "", 1);
  if (rc == 0) p->nhdrs++;
  return rc;
}

static bool is_gzip(const char *enc) {
  return enc && (strcasecmp(enc, "gzip") == 0 || strcasecmp(enc, "x-gzip") == 0);
}

/* Return values follow llhttp: 0 go on, 1 no body, anything else fails. */
static int on_headers_complete(llhttp_t *llh) {
  mg_http_parser_t *p = from(llh);
  p->headers_done = true;
  /* llhttp lets "GET \n" through as a version-less request. */
  if (p->kind == MG_HTTP_REQUEST && p->url_len == 0) return fail(p, MG_EHTTP, "malformed request: empty target");
  /* A tunnel would make the bytes after the headers someone else's protocol. */
  if (p->kind == MG_HTTP_REQUEST && llh->method == HTTP_CONNECT) return fail(p, MG_EHTTP, "CONNECT is not supported");
  if (p->kind == MG_HTTP_RESPONSE) {
    if (llh->status_code == 101) return fail(p, MG_EHTTP, "unexpected 101 Switching Protocols");
    /* Interim, 204 and 304 responses are bodiless whatever Content-Length
     * says, and so are HEAD responses: llhttp 8.1 would read a 304's
     * Content-Length bytes as its body, so it is told, like for HEAD. */
    if (llh->status_code < 200 || llh->status_code == 204 || llh->status_code == 304) return 1;
    if (p->flags & MG_HTTP_HEAD_RESPONSE) return 1;
  }
  if ((p->flags & MG_HTTP_GUNZIP) && is_gzip(mg_http_parser_header(p, "content-encoding"))) {
    /* 16 + MAX_WBITS: expect the gzip wrapper, not raw zlib. */
    int zrc = p->z_ready ? inflateReset2(&p->z, 16 + MAX_WBITS) : inflateInit2(&p->z, 16 + MAX_WBITS);
    if (zrc != Z_OK) return fail(p, MG_ENOMEM, "inflate init failed");
    p->z_ready = p->gzip = true;
  }
  if ((llh->flags & F_CONTENT_LENGTH) && !(llh->flags & F_CHUNKED) && !p->gzip) {
    /* Fail before reading a body that cannot fit, and size the buffer once
     * for the common case of a known length. */
    if (llh->content_length > p->max_body)
      return fail(p, MG_ETOOBIG, "%s body over limit (%zu bytes)", kind_name(p), p->max_body);
    int rc = mg_buf_reserve(p->body, (size_t)llh->content_length);
    if (rc != 0) return fail(p, rc, "%s body of %llu bytes: %s", kind_name(p), (unsigned long long)llh->content_length,
                             mg_err_str(rc));
  }
  return 0;
}

static int body_over(mg_http_parser_t *p) {
  return fail(p, MG_ETOOBIG, "%s body over limit (%zu bytes)", kind_name(p), p->max_body);
}

/* Inflate straight into the body buffer: the only copy of the decoded bytes.
 * The limit applies to the inflated size, so a small bomb fails early. */
static int inflate_body(mg_http_parser_t *p, const char *at, size_t n) {
  mg_buf_t *b = p->body;
  p->gz_seen = true;
  p->z.next_in = (Bytef *)(uintptr_t)at;
  p->z.avail_in = (uInt)n;
  while (p->z.avail_in > 0) {
    if (p->gz_end) {
      /* RFC 1952 allows several members back to back. */
      if (inflateReset(&p->z) != Z_OK) return fail(p, MG_EGZIP, "gzip reset failed");
      p->gz_end = false;
    }
    /* At the limit, inflate into a one-byte probe: any output is too much. */
    unsigned char probe;
    bool at_limit = b->len >= p->max_body;
    size_t room = 1;
    if (!at_limit) {
      if (!b->data || b->cap - b->len < 4096) {
        size_t want = b->len > INFLATE_STEP ? b->len : INFLATE_STEP; /* doubles the buffer */
        if (want > p->max_body - b->len) want = p->max_body - b->len;
        int rc = mg_buf_reserve(b, want);
        if (rc != 0) return rc == MG_ETOOBIG ? body_over(p) : fail(p, rc, "out of memory for body");
      }
      room = b->cap - b->len;
      if (room > p->max_body - b->len) room = p->max_body - b->len;
      if (room > UINT32_MAX) room = UINT32_MAX;
    }
    p->z.next_out = at_limit ? &probe : (Bytef *)b->data + b->len;
    p->z.avail_out = (uInt)room;
    uInt in_before = p->z.avail_in;
    int zrc = inflate(&p->z, Z_NO_FLUSH);
    size_t produced = room - p->z.avail_out;
    if (at_limit && produced) return body_over(p);
    if (!at_limit) {
      b->len += produced;
      b->data[b->len] = '\0';
    }
    if (zrc == Z_STREAM_END) {
      p->gz_end = true;
    } else if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
      return fail(p, MG_EGZIP, "bad gzip body: %s", p->z.msg ? p->z.msg : "inflate failed");
    } else if (produced == 0 && p->z.avail_in == in_before) {
      return fail(p, MG_EGZIP, "bad gzip body: inflate made no progress");
    }
  }
  return 0;
}

static int on_body(llhttp_t *llh, const char *at, size_t n) {
  mg_http_parser_t *p = from(llh);
  if (p->gzip) return inflate_body(p, at, n);
  if (n > p->max_body || p->body->len > p->max_body - n) return body_over(p);
  int rc = mg_buf_append(p->body, at, n);
  if (rc == MG_ETOOBIG) return body_over(p);
  if (rc != 0) return fail(p, rc, "out of memory for body");
  return 0;
}

static int on_message_complete(llhttp_t *llh) {
  mg_http_parser_t *p = from(llh);
  if (p->kind == MG_HTTP_RESPONSE && llh->status_code < 200) return 0; /* wait for the final response */
  if (p->gzip && p->gz_seen && !p->gz_end) return fail(p, MG_EGZIP, "gzip body truncated");
  p->complete = true;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

mg_http_parser_t *mg_http_parser_new(mg_http_kind_t kind) {
  mg_http_parser_t *p = mg_calloc(1, sizeof *p);
  if (!p) return NULL;
  p->kind = kind;
  mg_buf_init(&p->hdrs, 0);
  llhttp_init(&p->llh, kind == MG_HTTP_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
  p->llh.data = p;
  return p;
}

void mg_http_parser_free(mg_http_parser_t *p) {
  if (!p) return;
  if (p->z_ready) inflateEnd(&p->z);
  mg_buf_cleanup(&p->hdrs);
  mg_free(p);
}

void mg_http_parser_reset(mg_http_parser_t *p, mg_buf_t *body, size_t max_body, size_t max_header_bytes,
                          unsigned flags) {
  llhttp_reset(&p->llh);
  p->max_header_bytes = max_header_bytes ? max_header_bytes : DEFAULT_MAX_HEADER_BYTES;
  clear_message(p);
  p->started = false;
  p->raw_head_bytes = 0;
  p->err = 0;
  p->detail[0] = '\0';
  p->flags = flags;
  p->body = body;
  p->max_body = max_body && max_body < body->limit ? max_body : body->limit;
  mg_buf_reset(body);
}

int mg_http_parser_feed(mg_http_parser_t *p, const char *data, size_t len, size_t *used) {
  *used = 0;
  if (p->err) return p->err;
  if (p->complete) return MG_HTTP_COMPLETE;
  llhttp_errno_t e = llhttp_execute(&p->llh, data, len);
  if (e == HPE_OK) {
    *used = len;
    if (!p->headers_done) {
      /* Whitespace and line folding never reach the span callbacks; bound
       * the raw bytes spent before the headers end as well. */
      p->raw_head_bytes += len;
      if (p->raw_head_bytes > 2 * p->max_header_bytes + 1024)
        fail(p, MG_ETOOBIG, "%s headers over limit (%zu bytes)", kind_name(p), p->max_header_bytes);
    }
    return p->err ? p->err : MG_HTTP_MORE;
  }
  if (e == HPE_PAUSED && p->complete) {
    *used = (size_t)(llhttp_get_error_pos(&p->llh) - data);
    return MG_HTTP_COMPLETE;
  }
  if (p->err) return p->err;
  if (e == HPE_PAUSED_UPGRADE) {
    fail(p, MG_EHTTP, "unexpected protocol upgrade");
  } else {
    const char *reason = llhttp_get_error_reason(&p->llh);
    fail(p, MG_EHTTP, "malformed %s (%s): %s", kind_name(p), llhttp_errno_name(e), reason ? reason : "");
  }
  return p->err;
}

int mg_http_parser_finish(mg_http_parser_t *p) {
  if (p->err) return p->err;
  if (p->complete) return MG_HTTP_COMPLETE;
  llhttp_errno_t e = llhttp_finish(&p->llh);
  if (p->err) return p->err;
  if (p->complete && (e == HPE_OK || e == HPE_PAUSED)) return MG_HTTP_COMPLETE;
  fail(p, MG_EHTTP, "connection closed before the %s was complete", kind_name(p));
  return p->err;
}

const char *mg_http_parser_error(const mg_http_parser_t *p) { return p->detail; }
bool mg_http_parser_started(const mg_http_parser_t *p) { return p->started; }
bool mg_http_parser_headers_done(const mg_http_parser_t *p) { return p->headers_done; }
bool mg_http_parser_keep_alive(const mg_http_parser_t *p) { return llhttp_should_keep_alive(&p->llh) != 0; }
int mg_http_parser_status(const mg_http_parser_t *p) { return p->llh.status_code; }

const char *mg_http_parser_method(const mg_http_parser_t *p) {
  return llhttp_method_name((llhttp_method_t)p->llh.method);
}

mg_str_t mg_http_parser_url(const mg_http_parser_t *p) {
  return p->url_len ? mg_str_n(p->hdrs.data, p->url_len) : mg_str_n("", 0);
}

/* Linear scan: messages carry a few dozen headers at most. */
const char *mg_http_parser_header(const mg_http_parser_t *p, const char *name) {
  for (size_t i = 0; i < p->nhdrs; i++)
    if (strcasecmp(p->hdrs.data + p->idx[i].name, name) == 0) return p->hdrs.data + p->idx[i].value;
  return NULL;
}

bool mg_http_is_token(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    bool alnum = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
    if (!alnum && !strchr("!#$%&'*+-.^_`|~", ch)) return false;
  }
  return true;
}

bool mg_http_is_value(const char *s) { return s && !strpbrk(s, "\r\n"); }
