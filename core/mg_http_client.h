/* mg_http_client: asynchronous HTTP/1.1 client on libuv, with a keep-alive
 * connection pool per (scheme, host, port, TLS options), deadlines for every
 * step, chunked and gzip response bodies, a response body limit, and TLS
 * through mg_tls (verification on by default, SNI). Used by scrapes, remote
 * write and the AWS credential providers. Owns its connections; callers own
 * request bodies and (optionally) the response body buffer. */
#ifndef MG_HTTP_CLIENT_H
#define MG_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_buf.h"
#include "mg_str.h"

typedef struct mg_http_client mg_http_client_t;
typedef struct mg_http_req mg_http_req_t;

typedef struct mg_http_header {
  const char *name;
  const char *value;
} mg_http_header_t;

/* TLS settings of a request (https:// only). Files are read when a
 * connection is first made with these settings and the context is cached. */
typedef struct mg_http_tls_opts {
  const char *ca_file;     /* NULL: the system trust store */
  const char *cert_file;   /* client certificate (mTLS), optional */
  const char *key_file;
  const char *server_name; /* SNI + verified name; NULL: the URL host */
  bool insecure_skip_verify;
} mg_http_tls_opts_t;

/* A piece of a streamed response body (see mg_http_request_t.on_body), ud
 * being the request's. Return 0 to go on, or a negative mg_err to stop: the
 * connection is closed and the completion callback runs with that error.
 * It must not cancel the request or free the client itself. */
typedef int (*mg_http_body_cb)(void *ud, const char *data, size_t len);

typedef struct mg_http_request {
  const char *method; /* "GET", "POST", "PUT" */
  const char *url;    /* http[s]://host[:port]/path[?query]; IPv6 as [::1]; no userinfo */
  const mg_http_header_t *headers; /* extra headers, sent in order */
  size_t nheaders;
  const void *body; /* borrowed until the callback runs */
  size_t body_len;
  uint64_t connect_timeout_ms; /* DNS + TCP connect + TLS handshake; 0 = timeout_ms */
  uint64_t timeout_ms;         /* whole request, from the call to the last body byte; 0 = 30 s */
  size_t max_body;             /* response body limit after decoding; 0 = 64 MiB */
  size_t max_header_bytes;     /* response header limit; 0 = 64 KiB */
  bool accept_gzip;            /* send Accept-Encoding: gzip and inflate transparently */
  /* The caller needs only the status of a 2xx answer (remote write ignores
   * its body): a 2xx body over max_body then completes the request with the
   * bytes read so far and body_truncated set, instead of MG_ETOOBIG; the
   * connection is closed rather than drained. Other statuses keep failing. */
  bool truncate_2xx_body;
  const mg_http_tls_opts_t *tls; /* NULL = defaults (verify against system CAs) */
  /* Optional caller-owned buffer that receives the decoded body (reset
   * first). Lets scrapes reuse buffers. NULL: the client uses its own. */
  mg_buf_t *body_out;
  /* Optional streaming (long responses such as a Kubernetes watch): the
   * decoded body of a 2xx response is handed over as it arrives and not
   * kept (resp->body is then empty in the completion callback); other
   * statuses are collected as usual so their message is there. max_body
   * then bounds what one read decodes (and a Content-Length body as a
   * whole). */
  mg_http_body_cb on_body;
} mg_http_request_t;

typedef struct mg_http_response {
  int status;           /* e.g. 200 */
  mg_buf_t *body;       /* decoded body: the caller's body_out or the client's */
  bool body_truncated;  /* only with truncate_2xx_body: otherwise over-limit bodies fail with MG_ETOOBIG */
  /* private: header storage */
  void *priv_;
} mg_http_response_t;

/* Header value by case-insensitive name; NULL if absent. Borrowed until the
 * callback returns. */
const char *mg_http_response_header(const mg_http_response_t *r, const char *name);

/* Completion: err is 0 when a full response arrived (any status), or a
 * negative mg_err: MG_ETIMEDOUT, MG_ECONNREFUSED, MG_ECONNRESET, MG_EDNS,
 * MG_ETLS, MG_EHTTP (malformed response), MG_ETOOBIG (body or headers over
 * the limit), MG_EGZIP, MG_ECANCELED. resp is non-NULL only when err == 0 and
 * is borrowed until the callback returns. detail is a short human reason
 * (never secrets), e.g. "certificate verify failed: self-signed certificate",
 * borrowed until return. The callback is never invoked from inside
 * mg_http_client_request (always deferred to the loop). */
typedef void (*mg_http_done_cb)(void *ud, int err, const char *detail, mg_http_response_t *resp);

typedef struct mg_http_client_opts {
  size_t max_idle_per_host; /* idle keep-alive connections kept; 0 = 4 */
  uint64_t idle_timeout_ms; /* close idle connections after; 0 = 90 s */
  const char *user_agent;   /* default "moongate/<version>" */
} mg_http_client_opts_t;

mg_http_client_t *mg_http_client_new(uv_loop_t *loop, const mg_http_client_opts_t *opts);
/* Cancels pending requests (their callbacks run with MG_ECANCELED), closes
 * all connections, and frees itself once the last handle is closed. */
void mg_http_client_free(mg_http_client_t *c);

/* Start a request. Returns 0 (callback will run exactly once) or a negative
 * mg_err for invalid arguments (bad URL: MG_EINVAL) with no callback.
 * *handle (optional) can cancel it until the callback runs. A request on a
 * reused keep-alive connection that fails before any response byte arrives
 * is retried once on a fresh connection (the server closed an idle one). */
int mg_http_client_request(mg_http_client_t *c, const mg_http_request_t *req, mg_http_done_cb cb, void *ud,
                           mg_http_req_t **handle);
/* The callback then runs (deferred) with MG_ECANCELED. */
void mg_http_client_cancel(mg_http_req_t *r);

/* Counters for self-metrics. */
typedef struct mg_http_client_stats {
  uint64_t connections_opened;
  uint64_t connections_reused;
  uint64_t requests;
} mg_http_client_stats_t;
void mg_http_client_get_stats(const mg_http_client_t *c, mg_http_client_stats_t *out);

#endif
