/* mg_creds: AWS credential providers (static, environment, shared
 * credentials/config profiles, credential_process, IMDSv2, ECS/EKS
 * container endpoint, web identity, STS AssumeRole, the SDKs' default
 * chain) behind one asynchronous interface on the loop, with refresh ahead
 * of expiry so a rotation never fails a write. Owns the provider tree, its
 * handles (timers, fs events, child processes), in-flight HTTP requests
 * and the current credentials. Must not block the loop (files are read
 * with uv_fs_*, or through an mg_fileio reader for the files it serves;
 * the only synchronous call is a rate-limited stat()) and
 * must never put a secret key or token in a log line, metric or error. */
#ifndef MG_CREDS_H
#define MG_CREDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_fileio.h"
#include "mg_http_client.h"

typedef struct mg_creds mg_creds_t;

/* One set of credentials: immutable and reference-counted, so a request
 * in flight keeps the credentials it was signed with while a rotation
 * swaps in new ones. All strings live in one block that the last unref
 * wipes (OPENSSL_cleanse) and frees. There is deliberately no function
 * that prints one: log `source` and mg_log_mask(access_key_id) only. */
typedef struct mg_creds_value {
  const char *access_key_id;
  const char *secret_access_key; /* secret */
  const char *session_token;     /* secret; NULL for long-term keys */
  int64_t expires_ms;            /* wall clock, ms since the epoch; 0 = does not expire */
  const char *source; /* where it came from, no secrets, e.g.
                         "shared-credentials-file /root/.aws/credentials [default]" */
  const char *kind;   /* provider that produced it: "static", "env", "profile",
                         "process", "imds", "ecs", "web_identity", "assume_role" */
  /* private */
  uint32_t refs_;
  size_t size_;
  int64_t obtained_ms_, refresh_ms_, stale_ms_;
} mg_creds_value_t;

/* Take / drop a reference. NULL is fine for both. */
mg_creds_value_t *mg_creds_value_ref(mg_creds_value_t *v);
void mg_creds_value_unref(mg_creds_value_t *v);

/* Knobs; zero fields take the defaults. */
typedef struct mg_creds_opts {
  uint64_t http_timeout_ms;        /* each STS / ECS request: 5000 */
  uint64_t imds_timeout_ms;        /* each IMDS request (off EC2 this bounds start-up): 1000 */
  uint64_t process_timeout_ms;     /* credential_process, then SIGKILL: 30000 */
  uint64_t retry_min_ms;           /* first retry after a failed refresh: 500 */
  uint64_t retry_max_ms;           /* backoff cap: 60000 */
  uint64_t invalidate_interval_ms; /* at most one forced refresh per interval: 10000 */
} mg_creds_opts_t;

/* Build the provider tree for conf (borrowed: everything needed is copied)
 * and start fetching at once on the loop. The environment (AWS_* variables,
 * HOME) is read here, once. default_region (may be NULL) is the region STS
 * is called in when conf->sts_region is not set (then AWS_REGION,
 * AWS_DEFAULT_REGION, a profile's region, else the global endpoint). name
 * labels logs and metrics (e.g. the destination name). http is borrowed and
 * must outlive the mg_creds_free'd object until its requests were
 * cancelled (mg_creds_free cancels them). opts may be NULL.
 * Returns NULL with *err = MG_ECONFIG (an invalid combination, logged with
 * the reason: static without keys, assume_role without role_arn, ECS
 * without its variables, a disallowed ECS URL, ...), MG_EINVAL or
 * MG_ENOMEM. */
mg_creds_t *mg_creds_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_creds_t *conf,
                         const char *default_region, const char *name, const mg_creds_opts_t *opts, int *err);

/* Stop: cancels in-flight HTTP requests, kills a running credential
 * process, closes handles; memory is released in the last close callback
 * (run the loop to finish). Waiters still registered are detached without
 * a callback. Values handed out stay valid until their last unref. NULL is
 * fine. */
void mg_creds_free(mg_creds_t *c);

/* A new reference to valid credentials (not expired, with a safety margin
 * of min(60 s, 10 % of their lifetime)), or NULL when none are available
 * right now; then a refresh is running or scheduled (use mg_creds_wait).
 * Never blocks and does no I/O, except that at most once per second it
 * stat()s the shared credentials/config files in use, as a fallback for
 * missed file events. */
mg_creds_value_t *mg_creds_current(mg_creds_t *c);

/* Waiter, embedded in the caller's object. Private fields. */
typedef struct mg_creds_waiter {
  struct mg_creds_waiter *next_, *prev_;
  mg_creds_t *c_;
  void (*cb_)(void *ud, int err);
  void *ud_;
} mg_creds_waiter_t;

/* Call cb(ud, err) once, when the next refresh finishes: err 0 when
 * credentials are available (mg_creds_current will return them), else the
 * refresh's negative mg_err (MG_ECREDS, MG_ETIMEDOUT, ...). Starts a
 * refresh if none is running or scheduled (cheap when cached credentials
 * are still fresh). cb never runs from inside this call. Returns 0, or
 * MG_EINVAL (w already waiting) / MG_ECLOSED (being freed). */
int mg_creds_wait(mg_creds_t *c, mg_creds_waiter_t *w, void (*cb)(void *ud, int err), void *ud);
/* Forget a waiter (no callback). Safe if it is not waiting. */
void mg_creds_cancel_wait(mg_creds_waiter_t *w);

/* The service refused `rejected` (see mg_creds_is_rejection). If it is
 * still the current value, force one refresh now (concurrent callers share
 * it) and hold back mg_creds_current until it ends; at most one forced
 * refresh per opts.invalidate_interval_ms, so a broken key does not hammer
 * STS. If credentials were rotated meanwhile this does nothing: retry with
 * mg_creds_current. */
void mg_creds_invalidate(mg_creds_t *c, const mg_creds_value_t *rejected);

/* Whether an AWS answer means the credentials themselves were refused:
 * status 400/401/403 with error type or code ExpiredToken(Exception),
 * InvalidClientTokenId, UnrecognizedClient(Exception), InvalidSignature-
 * Exception, SignatureDoesNotMatch or IncompleteSignature(Exception), given
 * in x-amzn-ErrorType (error_type, may be NULL; a ":..." suffix is
 * ignored) or in the body (a JSON "__type"/"code" or XML <Code>, or the
 * messages AWS uses for them). */
bool mg_creds_is_rejection(int status, const char *error_type, const char *body, size_t body_len);

/* Status for logs, /metrics and `moongate check`. No secrets. */
typedef struct mg_creds_info {
  char name[64];
  char source[256];        /* what the current credentials came from; "" if none yet */
  char kind[24];           /* its provider kind */
  char access_key_id[16];  /* masked, "ASIA****" */
  int64_t expires_ms;      /* 0: does not expire, or none */
  bool available;          /* mg_creds_current would return a value */
  bool refreshing;
  char last_error[512];    /* "" when the last refresh succeeded */
  uint64_t refresh_successes, refresh_failures;
  int64_t last_success_ms, last_failure_ms; /* wall clock; 0 = never */
} mg_creds_info_t;
void mg_creds_describe(const mg_creds_t *c, mg_creds_info_t *info);

/* Self-metrics kept per object (label credentials=<name>):
 *   moongate_aws_credentials_expiry_timestamp_seconds{credentials}  (0: no expiry)
 *   moongate_aws_credentials_refresh_total{credentials,source,result="success"|"failure"}
 * where source is the provider kind that produced or failed ("chain" when
 * no source of a chain had credentials). */

/* ---- files read on someone else's behalf (moongate run --user) ---- */

#define MG_CREDS_ENV_FILES_MAX 4
#define MG_CREDS_PATH_MAX 4096

/* The files that mg_creds objects made in this environment read when the
 * configuration names no others: the shared credentials file
 * (AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials), the config file
 * (AWS_CONFIG_FILE, else ~/.aws/config), and the token files named by
 * AWS_WEB_IDENTITY_TOKEN_FILE and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
 * when set; "~" is HOME, else the current user's home directory, exactly
 * as mg_creds_new expands it. Start-up only (may read /etc/passwd).
 * Writes at most max distinct paths; returns how many. */
size_t mg_creds_env_files(char (*paths)[MG_CREDS_PATH_MAX], size_t max);

/* From now on, mg_creds objects made by mg_creds_new read and watch the
 * paths io serves through io (NULL: every file directly, the default).
 * Other paths are still read directly, with this process's rights. io is
 * borrowed: it must outlive every object made while it was set. */
void mg_creds_use_fileio(const mg_fileio_t *io);

/* ---- parsers, exposed for tests and fuzzing (pure) ---- */

/* RFC 3339 / ISO 8601 timestamp as AWS writes it ("2024-05-01T16:00:00Z",
 * fractions and +hh:mm offsets accepted) -> ms since the epoch (UTC).
 * 0 or MG_EPARSE. */
int mg_creds_parse_time(const char *s, size_t n, int64_t *ms);

typedef enum {
  MG_CREDS_DOC_IMDS = 0, /* Code, AccessKeyId, SecretAccessKey, Token, Expiration */
  MG_CREDS_DOC_ECS,      /* AccessKeyId, SecretAccessKey, Token, Expiration */
  MG_CREDS_DOC_PROCESS,  /* Version 1, AccessKeyId, SecretAccessKey, [SessionToken], [Expiration] */
} mg_creds_doc_t;

/* Parse a JSON credential document into a new value (kind and source are
 * copied into it), checking required fields and that the credentials are
 * well-formed and not expired at now_ms. On error returns a negative
 * mg_err and writes a reason without secrets into msg. */
int mg_creds_parse_json(mg_creds_doc_t doc, const char *json, size_t len, int64_t now_ms, const char *kind,
                        const char *source, mg_creds_value_t **out, char *msg, size_t msgsz);

/* Parse an STS query-protocol answer (status is the HTTP status) for
 * action "AssumeRole" or "AssumeRoleWithWebIdentity": a new value from
 * <action>Response/<action>Result/Credentials, or for an ErrorResponse the
 * error code and message in msg (MG_ECREDS). */
int mg_creds_parse_sts(const char *action, int status, const char *xml, size_t len, int64_t now_ms, const char *kind,
                       const char *source, mg_creds_value_t **out, char *msg, size_t msgsz);

#endif
