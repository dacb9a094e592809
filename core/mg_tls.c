/* mg_tls: OpenSSL contexts and sessions over memory BIOs. Owns SSL_CTX and
 * SSL objects; the caller moves bytes between the BIOs and its sockets.
 * Every failure is turned into MG_ETLS plus one readable line, taken from the
 * certificate verify result or the first entry of OpenSSL's error queue. */
#include "mg_tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

struct mg_tls_ctx {
  SSL_CTX *ssl;
  bool server, verify;
};

struct mg_tls {
  SSL *ssl;
  BIO *rbio, *wbio; /* owned by ssl */
  bool server, verify;
  char err[200];
};

/* "what: reason" with the earliest queued OpenSSL error (the root cause,
 * e.g. the system error behind a failed file load); clears the queue. */
static void describe(char *out, size_t sz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void describe(char *out, size_t sz, const char *fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  unsigned long e = ERR_get_error();
  /* System errors (a missing file) carry errno as their reason code. */
  const char *reason = !e ? NULL : ERR_GET_LIB(e) == ERR_LIB_SYS ? strerror(ERR_GET_REASON(e)) : ERR_reason_error_string(e);
  if (e && !reason) reason = ERR_lib_error_string(e);
  snprintf(out, sz, "%s: %s", what, reason ? reason : "unknown error");
  ERR_clear_error();
}

int mg_tls_ctx_new(bool server, const mg_tls_ctx_opts_t *o, mg_tls_ctx_t **out, char *detail, size_t detail_sz) {
  *out = NULL;
  if (detail_sz) detail[0] = '\0';
  ERR_clear_error();
  mg_tls_ctx_t *c = mg_calloc(1, sizeof *c);
  if (!c) return MG_ENOMEM;
  c->server = server;
  c->ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!c->ssl) {
    mg_free(c);
    return MG_ENOMEM;
  }
  SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
  /* Idle pooled connections then hold no 34 KiB read/write buffers. */
  SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
  const char *key = o->key_file ? o->key_file : o->cert_file;
  if (o->cert_file) {
    if (SSL_CTX_use_certificate_chain_file(c->ssl, o->cert_file) != 1) {
      describe(detail, detail_sz, "cert_file %s", o->cert_file);
      goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c->ssl, key, SSL_FILETYPE_PEM) != 1) {
      describe(detail, detail_sz, "key_file %s", key);
      goto fail;
    }
    if (SSL_CTX_check_private_key(c->ssl) != 1) {
      describe(detail, detail_sz, "key_file %s does not match cert_file %s", key, o->cert_file);
      goto fail;
    }
  } else if (server || o->key_file) {
    snprintf(detail, detail_sz, "%s", server ? "a TLS server needs cert_file" : "key_file given without cert_file");
    goto fail;
  }
  if (server) {
    if (o->ca_file) {
      STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
      if (!names || SSL_CTX_load_verify_locations(c->ssl, o->ca_file, NULL) != 1) {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        describe(detail, detail_sz, "ca_file %s", o->ca_file);
        goto fail;
      }
      SSL_CTX_set_client_CA_list(c->ssl, names);
      SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
      /* Required for session resumption when client certificates are verified. */
      SSL_CTX_set_session_id_context(c->ssl, (const unsigned char *)"moongate", 8);
      c->verify = true;
    }
  } else if (o->insecure_skip_verify) {
    SSL_CTX_set_verify(c->ssl, SSL_VERIFY_NONE, NULL);
  } else {
    int ok = o->ca_file ? SSL_CTX_load_verify_locations(c->ssl, o->ca_file, NULL)
                        : SSL_CTX_set_default_verify_paths(c->ssl);
    if (ok != 1) {
      describe(detail, detail_sz, "ca_file %s", o->ca_file ? o->ca_file : "(system store)");
      goto fail;
    }
    SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
    c->verify = true;
  }
  *out = c;
  return 0;
fail:
  SSL_CTX_free(c->ssl);
  mg_free(c);
  return MG_ETLS;
}

void mg_tls_ctx_free(mg_tls_ctx_t *ctx) {
  if (!ctx) return;
  SSL_CTX_free(ctx->ssl);
  mg_free(ctx);
}

static bool is_ip(const char *s) {
  unsigned char tmp[16];
  return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

mg_tls_t *mg_tls_new(mg_tls_ctx_t *ctx, const char *server_name) {
  mg_tls_t *t = mg_calloc(1, sizeof *t);
  if (!t) return NULL;
  t->server = ctx->server;
  t->verify = ctx->verify;
  t->ssl = SSL_new(ctx->ssl);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) goto fail;
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  if (t->server) {
    SSL_set_accept_state(t->ssl);
    return t;
  }
  SSL_set_connect_state(t->ssl);
  if (server_name) {
    bool ip = is_ip(server_name);
    /* RFC 6066 3: literal IP addresses are not sent as SNI. */
    if (!ip && SSL_set_tlsext_host_name(t->ssl, server_name) != 1) goto fail_ssl;
    if (t->verify) {
      int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), server_name) : SSL_set1_host(t->ssl, server_name);
      if (ok != 1) goto fail_ssl;
      SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
  } else if (t->verify) {
    goto fail_ssl; /* verification without a name to check would accept any valid certificate */
  }
  return t;
fail:
  BIO_free(t->rbio);
  BIO_free(t->wbio);
fail_ssl:
  SSL_free(t->ssl);
  ERR_clear_error();
  mg_free(t);
  return NULL;
}

void mg_tls_free(mg_tls_t *t) {
  if (!t) return;
  SSL_free(t->ssl);
  mg_free(t);
}

int mg_tls_feed(mg_tls_t *t, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    int n = len > INT_MAX ? INT_MAX : (int)len;
    int w = BIO_write(t->rbio, p, n);
    if (w <= 0) return MG_ENOMEM;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Classify a failed SSL call. Memory BIOs never block on writes, so the only
 * retry case is more input. */
static int ssl_result(mg_tls_t *t, int rc, const char *what) {
  switch (SSL_get_error(t->ssl, rc)) {
  case SSL_ERROR_WANT_READ:
    return MG_EAGAIN;
  case SSL_ERROR_ZERO_RETURN:
    return MG_ECLOSED;
  default:
    break;
  }
  long v = SSL_get_verify_result(t->ssl);
  if (t->verify && v != X509_V_OK && !SSL_is_init_finished(t->ssl)) {
    snprintf(t->err, sizeof t->err, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    ERR_clear_error();
  } else {
    describe(t->err, sizeof t->err, "%s", what);
  }
  return MG_ETLS;
}

int mg_tls_handshake(mg_tls_t *t) {
  ERR_clear_error();
  int rc = SSL_do_handshake(t->ssl);
  return rc == 1 ? 0 : ssl_result(t, rc, "TLS handshake");
}

int mg_tls_read(mg_tls_t *t, void *out, size_t cap, size_t *n) {
  ERR_clear_error();
  *n = 0;
  if (SSL_read_ex(t->ssl, out, cap, n) == 1) return 0;
  *n = 0;
  return ssl_result(t, 0, "TLS read");
}

int mg_tls_write(mg_tls_t *t, const void *data, size_t len) {
  if (len == 0) return 0;
  ERR_clear_error();
  size_t written = 0;
  if (SSL_write_ex(t->ssl, data, len, &written) == 1) return 0;
  int rc = ssl_result(t, 0, "TLS write");
  return rc == MG_EAGAIN ? MG_ETLS : rc;
}

void mg_tls_shutdown(mg_tls_t *t) {
  ERR_clear_error();
  SSL_shutdown(t->ssl);
  ERR_clear_error();
}

size_t mg_tls_pending(const mg_tls_t *t) { return BIO_ctrl_pending(t->wbio); }

size_t mg_tls_take(mg_tls_t *t, void *out, size_t cap) {
  size_t got = 0;
  if (cap && BIO_read_ex(t->wbio, out, cap, &got) != 1) return 0;
  return got;
}

const char *mg_tls_error(const mg_tls_t *t) { return t->err; }

const char *mg_tls_server_name(const mg_tls_t *t) {
  return t->server ? SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}
