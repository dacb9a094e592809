/* mg_sigv4: AWS Signature Version 4 (header signing) for non-S3 services
 * (aps, sts, ec2): canonical request, string to sign, HMAC-SHA256 key chain.
 * Holds no state between calls except the caller's optional key cache.
 * Pure: no libuv, no sockets, no clock (time is a parameter), no logging. */
#ifndef MG_SIGV4_H
#define MG_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "mg_buf.h"

/* Longest Authorization value produced; longer (a very long access key id,
 * region, service or signed-header list) fails with MG_ETOOBIG. */
#define MG_SIGV4_AUTHORIZATION_MAX 2048

/* Flags for mg_sigv4_sign. */
enum {
  /* Sign and return x-amz-content-sha256 (the payload hash as a header);
   * required by some services, harmless for the others. */
  MG_SIGV4_ADD_CONTENT_SHA256 = 1 << 0,
};

/* Credentials, borrowed for the duration of the call: access key id 1-128
 * of A-Za-z0-9 - _ . ; secret 1-256 bytes; session_token NULL or "" for
 * long-term keys, else printable ASCII without spaces (it is sent as a
 * header value). */
typedef struct mg_sigv4_creds {
  const char *access_key_id;
  const char *secret_access_key;
  const char *session_token;
} mg_sigv4_creds_t;

typedef struct mg_sigv4_header {
  const char *name;
  const char *value;
} mg_sigv4_header_t;

/* One request as it will go on the wire. All pointers are borrowed. */
typedef struct mg_sigv4_request {
  const char *method;   /* "POST"; used as given (upper case expected) */
  const char *url_path; /* path as sent, already percent-encoded for the wire,
                           e.g. "/workspaces/ws-1/api/v1/remote_write" */
  const char *query;    /* query as sent, without '?'; NULL or "" for none */
  /* Every header that will be sent, including host (required), except the
   * ones this function returns. All of them are signed; names are matched
   * case-insensitively; repeated names are signed in the order given. */
  const mg_sigv4_header_t *headers;
  size_t nheaders;
  /* The body, hashed here... */
  const void *payload;
  size_t payload_len;
  /* ...unless this is set: the payload hash as 64 lower-case hex digits, or
   * a literal such as "UNSIGNED-PAYLOAD" (printable, at most 64 chars). */
  const char *payload_sha256_hex;
  const char *region;  /* "us-east-1"; 1-63 of A-Za-z0-9 - _ . */
  const char *service; /* "aps"; 1-63 of A-Za-z0-9 - _ . */
  int64_t unix_time;   /* seconds since the epoch, UTC; years 1970-9999 */
} mg_sigv4_request_t;

/* The output: headers the caller must add, unchanged, before sending. No
 * header may change after signing. Everything here is safe to log except
 * the session token, which `add` points to (borrowed from the creds). */
typedef struct mg_sigv4_result {
  char amz_date[17];        /* "20150830T123600Z" */
  char content_sha256[65];  /* payload hash as signed (or the literal) */
  char authorization[MG_SIGV4_AUTHORIZATION_MAX];
  /* Ready-made list to append to the request, in this order: Authorization,
   * X-Amz-Date, then X-Amz-Content-SHA256 (with the flag) and
   * X-Amz-Security-Token (with a session token). Values point into this
   * struct (use it in place, don't copy it) or into creds->session_token. */
  mg_sigv4_header_t add[4];
  size_t nadd;
} mg_sigv4_result_t;

/* Derived signing key cache: kSigning for one (access key id, secret,
 * date, region, service), embedded in its owner (one per destination).
 * It keeps a copy of the derived key only, never the secret: the secret is
 * recognised by a 64-bit fingerprint. A change of any part, including a
 * new day or rotated credentials, recomputes and replaces the entry.
 * Not thread-safe; fields other than the counters are private. */
typedef struct mg_sigv4_key_cache {
  uint64_t hits, misses; /* read-only for callers (self-metrics, tests) */
  int valid;
  unsigned char key[32];
  uint64_t secret_fp;
  char date[9];
  char access_key_id[129];
  char region[64];
  char service[64];
} mg_sigv4_key_cache_t;

void mg_sigv4_key_cache_init(mg_sigv4_key_cache_t *c);
/* Wipes the whole entry (derived key included) and the counters. Safe on an
 * initialised or zeroed cache; the cache may be reused after init. */
void mg_sigv4_key_cache_cleanup(mg_sigv4_key_cache_t *c);

/* Sign req with creds at req->unix_time and fill *out (the secret is
 * nowhere in it). cache may be NULL (derive the key every time); on success
 * it holds this request's derived key. debug, if not NULL, receives the
 * canonical request, a blank line, then the string to sign (for a 403);
 * any x-amz-security-token value is shown as "<session token>" (the string
 * to sign still hashes the real canonical request); the secret never
 * appears. It is appended to; on error it may hold part of the text.
 *
 * The canonical request follows the SigV4 rules for non-S3 services: the
 * path is normalised (empty and "." segments dropped, ".." pops, one
 * leading '/', a trailing '/' kept) and then percent-encoded as given, so an
 * already-encoded "%20" becomes "%2520" (AWS's double encoding); the query
 * is split on '&' (empty pieces ignored) and '=', each name and value
 * percent-decoded ('+' is a literal plus) and re-encoded (unreserved
 * A-Za-z0-9-_.~ kept, %XX upper case), sorted by name then value; header
 * names are lower-cased, values trimmed with runs of spaces, tabs and line
 * breaks folded to one space, repeated names joined with ',' in order.
 *
 * Errors: MG_EINVAL for a missing or malformed field (a method or header
 * name that is not an HTTP token, credentials, region or service outside
 * the limits above, no host header, a header the signer adds given by the
 * caller: authorization, x-amz-date, and x-amz-security-token or
 * x-amz-content-sha256 when the signer adds them; a bad payload_sha256_hex,
 * a time outside 1970-9999); MG_ETOOBIG when the Authorization value does
 * not fit MG_SIGV4_AUTHORIZATION_MAX or debug hits its limit; MG_ENOMEM.
 * On error *out is zeroed. */
int mg_sigv4_sign(mg_sigv4_key_cache_t *cache, const mg_sigv4_request_t *req,
                  const mg_sigv4_creds_t *creds, int flags, mg_sigv4_result_t *out,
                  mg_buf_t *debug);

#endif
