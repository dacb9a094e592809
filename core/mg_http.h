/* mg_http: the HTTP/1.1 message parser shared by mg_http_client and
 * mg_http_server, a thin seam over llhttp. Owns the header store (bounded in
 * bytes and count) and streams the body, gunzipped when asked, into a
 * caller's mg_buf under a size limit. No sockets, no clock. */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "mg_buf.h"
#include "mg_str.h"

typedef struct mg_http_parser mg_http_parser_t;

typedef enum { MG_HTTP_REQUEST, MG_HTTP_RESPONSE } mg_http_kind_t;

/* Header fields kept per message; more fail like too many header bytes. */
#define MG_HTTP_MAX_HEADERS 100

/* mg_http_parser_reset flags. */
#define MG_HTTP_HEAD_RESPONSE 0x1u /* response to HEAD: headers only, whatever Content-Length says */
#define MG_HTTP_GUNZIP 0x2u        /* inflate a body sent with Content-Encoding: gzip */

/* Results of mg_http_parser_feed / _finish besides errors. */
#define MG_HTTP_MORE 0     /* all bytes consumed, the message is not complete yet */
#define MG_HTTP_COMPLETE 1 /* a whole message arrived; *used says where it ended */

/* Returns NULL on OOM. */
mg_http_parser_t *mg_http_parser_new(mg_http_kind_t kind);
void mg_http_parser_free(mg_http_parser_t *p);

/* Start a message (also before the first one). body (borrowed until the
 * next reset) is emptied and receives the decoded body; max_body bounds it
 * (0 = the buffer's limit). max_header_bytes bounds the start line plus all
 * header names and values (0 = 64 KiB). Interim 1xx responses are skipped. */
void mg_http_parser_reset(mg_http_parser_t *p, mg_buf_t *body, size_t max_body, size_t max_header_bytes,
                          unsigned flags);

/* Parse len bytes. Returns MG_HTTP_MORE, MG_HTTP_COMPLETE (bytes after *used
 * belong to the next message; call reset before feeding them), or an error:
 * MG_EHTTP (malformed), MG_ETOOBIG (headers or body over the limits; a
 * Content-Length over max_body fails before any body byte), MG_EGZIP,
 * MG_ENOMEM. After an error the parser must be reset. */
int mg_http_parser_feed(mg_http_parser_t *p, const char *data, size_t len, size_t *used);
/* The peer closed the stream: MG_HTTP_COMPLETE when that ends the message
 * (a body delimited by the connection close), else MG_EHTTP. */
int mg_http_parser_finish(mg_http_parser_t *p);

/* Human reason of the last error, e.g. "response headers over limit (65536
 * bytes)". Borrowed until the next call. */
const char *mg_http_parser_error(const mg_http_parser_t *p);

/* True once any byte of the current message arrived / its headers ended. */
bool mg_http_parser_started(const mg_http_parser_t *p);
bool mg_http_parser_headers_done(const mg_http_parser_t *p);
/* Whether the connection may carry another message after this one. */
bool mg_http_parser_keep_alive(const mg_http_parser_t *p);

/* Message fields, valid after headers_done until the next reset. */
int mg_http_parser_status(const mg_http_parser_t *p);         /* responses */
const char *mg_http_parser_method(const mg_http_parser_t *p); /* requests: "GET" */
mg_str_t mg_http_parser_url(const mg_http_parser_t *p);       /* requests: request target */
/* Value of the first header with this name (case-insensitive) or NULL;
 * borrowed until the next reset. */
const char *mg_http_parser_header(const mg_http_parser_t *p, const char *name);

/* RFC 9110 5.6.2 token (header names, methods); false for NULL or "". */
bool mg_http_is_token(const char *s);
/* A header value we may send: non-NULL, no CR or LF (no header injection). */
bool mg_http_is_value(const char *s);

#endif
