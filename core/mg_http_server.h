/* mg_http_server: a small HTTP/1.1 server on libuv for moongate's own
 * endpoints (/metrics, /-/healthy, /-/ready, /-/reload, later /api/v1/write).
 * Keep-alive, header and body limits, idle and request deadlines, 404 for
 * unknown paths and 405 for wrong methods. Handlers run synchronously on
 * the loop and fill in the response before returning. */
#ifndef MG_HTTP_SERVER_H
#define MG_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_buf.h"
#include "mg_str.h"

typedef struct mg_http_server mg_http_server_t;

typedef struct mg_http_sreq {
  const char *method; /* "GET", "POST", ... */
  mg_str_t path;      /* without the query string */
  mg_str_t query;     /* after '?', may be empty */
  mg_str_t body;      /* complete request body (within max_body) */
  /* private */
  void *priv_;
} mg_http_sreq_t;

/* Request header by case-insensitive name, or NULL. Borrowed until the
 * handler returns. */
const char *mg_http_sreq_header(const mg_http_sreq_t *r, const char *name);

typedef struct mg_http_sresp {
  int status;        /* default 200 */
  mg_buf_t body;     /* handler appends here */
  /* private */
  void *priv_;
} mg_http_sresp_t;

/* Add a response header (copied). Content-Length is set by the server. */
int mg_http_sresp_header(mg_http_sresp_t *r, const char *name, const char *value);

typedef void (*mg_http_handler_fn)(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp);

typedef struct mg_http_server_opts {
  size_t max_header_bytes;   /* 0 = 16 KiB; over it: 431 and close */
  size_t max_body;           /* 0 = 1 MiB; over it: 413 and close */
  uint64_t idle_timeout_ms;  /* keep-alive idle; 0 = 60 s */
  uint64_t request_timeout_ms; /* whole request must arrive within; 0 = 30 s (slowloris) */
  size_t max_connections;    /* 0 = 256; extra connections are closed at once */
} mg_http_server_opts_t;

/* Bind and listen on "host:port" ("127.0.0.1:9464", "[::1]:9464",
 * "0.0.0.0:9464"; port 0 picks a free port). Returns NULL and sets *err
 * (negative mg_err) on failure. */
mg_http_server_t *mg_http_server_new(uv_loop_t *loop, const char *listen_addr, const mg_http_server_opts_t *opts,
                                     int *err);
/* Register a handler for an exact path. method NULL accepts any method;
 * otherwise other methods get 405. Later registrations of the same path
 * replace earlier ones. */
int mg_http_server_route(mg_http_server_t *s, const char *method, const char *path, mg_http_handler_fn fn, void *ud);
/* Serve HTTPS on this server's connections accepted from now on. PEM files
 * are read now; client_ca_file (optional) makes clients present a
 * certificate signed by it (mTLS). Returns 0, MG_ETLS (reason logged) or
 * MG_ENOMEM. */
int mg_http_server_tls(mg_http_server_t *s, const char *cert_file, const char *key_file, const char *client_ca_file);
/* The TLS SNI name the client sent, or NULL (plain HTTP, no SNI). Borrowed
 * until the handler returns. */
const char *mg_http_sreq_server_name(const mg_http_sreq_t *r);
/* The bound port (useful with port 0). */
int mg_http_server_port(const mg_http_server_t *s);
/* Stop listening, close all connections, free in the last close callback. */
void mg_http_server_free(mg_http_server_t *s);

#endif
