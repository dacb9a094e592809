/* mg_tls: OpenSSL behind a small seam. A context holds trust anchors and
 * certificates read once from files; a session runs TLS over memory BIOs and
 * its owner moves the ciphertext. Clients verify the peer by default (system
 * store or CA file; host name or IP). No sockets, no loop, never logs. */
#ifndef MG_TLS_H
#define MG_TLS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mg_tls_ctx mg_tls_ctx_t;
typedef struct mg_tls mg_tls_t;

typedef struct mg_tls_ctx_opts {
  /* Client: trust anchors (NULL = the system store). Server: CA that signs
   * client certificates; when set, clients must present one (mTLS). */
  const char *ca_file;
  /* Client: optional client certificate. Server: required. PEM; the chain
   * file may hold intermediates. key_file NULL = the key is in cert_file. */
  const char *cert_file;
  const char *key_file;
  bool insecure_skip_verify; /* client only: accept any certificate and name */
} mg_tls_ctx_opts_t;

/* Build a context (reads the files now). Returns 0, or MG_ETLS with a reason
 * in detail ("ca_file /x: No such file or directory"), or MG_ENOMEM. */
int mg_tls_ctx_new(bool server, const mg_tls_ctx_opts_t *o, mg_tls_ctx_t **out, char *detail, size_t detail_sz);
/* Sessions hold their own reference, so this may run while they live. */
void mg_tls_ctx_free(mg_tls_ctx_t *ctx);

/* A session; its side follows the context. Client: server_name is sent as
 * SNI (unless it is an IP address) and verified against the certificate (DNS
 * name or IP SAN) unless the context skips verification; NULL only with
 * insecure_skip_verify. Server: server_name is ignored. NULL on OOM. */
mg_tls_t *mg_tls_new(mg_tls_ctx_t *ctx, const char *server_name);
void mg_tls_free(mg_tls_t *t);

/* Ciphertext from the network. 0 or MG_ENOMEM. */
int mg_tls_feed(mg_tls_t *t, const void *data, size_t len);
/* Advance the handshake: 0 done, MG_EAGAIN needs more input, MG_ETLS failed
 * (see mg_tls_error). Send mg_tls_take output after each call. */
int mg_tls_handshake(mg_tls_t *t);
/* Decrypt into out: 0 with *n > 0, MG_EAGAIN with *n == 0 when more input is
 * needed, MG_ECLOSED when the peer sent close_notify, MG_ETLS. */
int mg_tls_read(mg_tls_t *t, void *out, size_t cap, size_t *n);
/* Encrypt len bytes of application data into the pending output. 0 or MG_ETLS. */
int mg_tls_write(mg_tls_t *t, const void *data, size_t len);
/* Queue a close_notify alert. */
void mg_tls_shutdown(mg_tls_t *t);
/* Ciphertext waiting to be sent, and moving up to cap bytes of it out. */
size_t mg_tls_pending(const mg_tls_t *t);
size_t mg_tls_take(mg_tls_t *t, void *out, size_t cap);

/* Reason of the last MG_ETLS, e.g. "certificate verify failed: hostname
 * mismatch". Borrowed until the next call on t. */
const char *mg_tls_error(const mg_tls_t *t);
/* Server mode: the SNI name the client asked for, or NULL. */
const char *mg_tls_server_name(const mg_tls_t *t);

#endif
