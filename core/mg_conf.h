/* mg_conf: the plan moongate runs — scrape jobs, their targets, and
 * destinations — built by a loader (a Lua script through mg_lua_api, or a
 * prometheus.yml through mg_promyml), then given defaults, checked and
 * frozen by mg_conf_finish. The engine reads it and never changes it.
 * Owns every string and array in it; one mg_conf_free releases all. */
#ifndef MG_CONF_H
#define MG_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct mg_kv {
  char *name;
  char *value;
} mg_kv_t;

typedef struct mg_kvs {
  mg_kv_t *v;
  size_t n, cap;
} mg_kvs_t;

typedef struct mg_conf_tls {
  char *ca_file;
  char *cert_file;
  char *key_file;
  char *server_name; /* SNI and verification name; default: the URL host */
  bool insecure_skip_verify;
} mg_conf_tls_t;

/* HTTP authentication towards a target or a destination. At most one of
 * basic auth and authorization may be set (checked by mg_conf_finish).
 * Secret fields are wiped on free and never printed. */
typedef struct mg_conf_auth {
  char *basic_username;
  char *basic_password;
  char *basic_password_file;
  char *auth_type;        /* Authorization scheme, "Bearer" when credentials set */
  char *credentials;      /* secret */
  char *credentials_file; /* read at start and on reload */
} mg_conf_auth_t;

/* One Prometheus relabel_config, as written (mg_relabel compiles it). NULL
 * strings mean "not set": mg_relabel applies Prometheus's defaults
 * (separator ";", regex "(.*)", replacement "$1", action "replace"). */
typedef struct mg_conf_relabel {
  char **source_labels;
  size_t nsource_labels;
  char *separator;
  char *regex;
  uint64_t modulus;
  char *target_label;
  char *replacement;
  char *action; /* replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep, lowercase, uppercase */
  uint32_t line; /* where it was declared (0 = unknown), for error messages */
} mg_conf_relabel_t;

typedef struct mg_conf_relabels {
  mg_conf_relabel_t **v;
  size_t n, cap;
} mg_conf_relabels_t;

typedef struct mg_conf_target {
  char *address; /* host:port */
  mg_kvs_t labels;
} mg_conf_target_t;

/* Options of a discovery source as written (a YAML mapping or a Lua
 * table), kept as a tree of strings: each provider (mg_sd) reads and
 * checks its own fields. YAML scalars and Lua strings, numbers and
 * booleans are all SCALAR text ("true", "30s", "8080"). */
typedef enum { MG_CONF_VAL_SCALAR = 0, MG_CONF_VAL_LIST, MG_CONF_VAL_MAP } mg_conf_val_type_t;

typedef struct mg_conf_val {
  mg_conf_val_type_t type;
  char *s;                /* SCALAR: the text */
  char **keys;            /* MAP: member names, in the order written */
  struct mg_conf_val **v; /* LIST: items; MAP: values (keys[i] -> v[i]) */
  size_t n, cap;
  uint32_t line; /* where it was written (0 = unknown) */
} mg_conf_val_t;

/* One discovery source of a job (file_sd_configs entry, kubernetes_sd_configs
 * entry, a Lua targets function, ...). */
typedef struct mg_conf_sd {
  char *kind;          /* "file", "http", "dns", "kubernetes", "ec2", "lua" */
  mg_conf_val_t *opts; /* a MAP, never NULL once added */
  int lua_ref;         /* "lua": registry ref of the function in the plan's VM; -1 otherwise */
  uint32_t line;
} mg_conf_sd_t;

typedef struct mg_conf_job {
  char *name;
  uint64_t interval_ms;
  uint64_t timeout_ms;
  char *scheme;       /* "http" or "https" */
  char *metrics_path; /* "/metrics" */
  mg_kvs_t params;    /* URL query parameters, repeated names allowed */
  bool honor_labels;
  bool honor_timestamps; /* default true */
  bool enable_compression; /* ask for gzip; default true */
  mg_conf_auth_t auth;
  mg_conf_tls_t tls;
  uint64_t body_size_limit;   /* bytes, after decompression; 0 = default */
  uint64_t sample_limit;      /* 0 = unlimited, as in Prometheus */
  uint64_t label_limit;
  uint64_t label_name_length_limit;
  uint64_t label_value_length_limit;
  mg_conf_target_t **targets;
  size_t ntargets, targets_cap;
  mg_conf_relabels_t relabel_configs;        /* target relabeling, before scraping */
  mg_conf_relabels_t metric_relabel_configs; /* per series, after scraping */
  mg_conf_sd_t **sds; /* discovery sources; their targets join the static ones */
  size_t nsds, sds_cap;
} mg_conf_job_t;

typedef enum {
  MG_DEST_REMOTE_WRITE = 0, /* Prometheus remote write 1.0 over HTTP(S) */
  MG_DEST_STDOUT,           /* exposition lines on standard output (demo, debugging) */
  MG_DEST_FILE,             /* exposition lines appended to a file */
} mg_dest_kind_t;

/* queue_config of prometheus.yml, same meaning and defaults. */
typedef struct mg_conf_queue {
  uint32_t capacity;             /* samples buffered per shard: 2500 */
  uint32_t max_shards;           /* 50 */
  uint32_t min_shards;           /* 1 */
  uint32_t max_samples_per_send; /* 2000 */
  uint64_t batch_send_deadline_ms; /* 5000 */
  uint64_t min_backoff_ms;         /* 30 */
  uint64_t max_backoff_ms;         /* 5000 */
  bool retry_on_http_429;          /* true */
} mg_conf_queue_t;

/* The durable buffer of a remote-write destination (mg_wal under
 * DATA_DIR/wal/<destination>/): batches wait there, not in memory, until
 * delivered, and survive restarts and crashes. */
typedef struct mg_conf_buffer {
  bool memory_only;    /* no disk buffer: batches wait in memory (256 MiB cap) and die with the process */
  uint64_t max_bytes;  /* size cap of the files: 1 GiB; past it the oldest batches are dropped */
  uint64_t max_age_ms; /* batches older than this are dropped: 0 = no age cap */
} mg_conf_buffer_t;

/* Where AWS credentials come from (mg_creds builds a provider from this).
 * Secret fields are wiped on free and never printed. */
typedef enum {
  MG_CREDS_CHAIN = 0,     /* the SDKs' default chain: env, web identity, shared files/profile, ECS, IMDSv2 */
  MG_CREDS_STATIC,        /* access_key_id + secret_access_key (+ session_token) from the config */
  MG_CREDS_ENV,           /* AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN */
  MG_CREDS_PROFILE,       /* shared credentials + config files, one profile (role_arn, credential_process, ...) */
  MG_CREDS_IMDS,          /* EC2 instance metadata, IMDSv2 */
  MG_CREDS_ECS,           /* ECS/EKS Pod Identity container credentials endpoint */
  MG_CREDS_WEB_IDENTITY,  /* token file -> STS AssumeRoleWithWebIdentity */
  MG_CREDS_PROCESS,       /* credential_process command */
  MG_CREDS_ASSUME_ROLE,   /* STS AssumeRole on top of `source` */
} mg_creds_kind_t;

typedef struct mg_conf_creds {
  mg_creds_kind_t kind;
  char *access_key_id;     /* static */
  char *secret_access_key; /* static; secret */
  char *session_token;     /* static; secret */
  char *profile;           /* profile; NULL: AWS_PROFILE or "default" */
  char *credentials_file;  /* NULL: AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials */
  char *config_file;       /* NULL: AWS_CONFIG_FILE or ~/.aws/config */
  char *role_arn;          /* assume_role, web_identity */
  char *external_id;
  char *role_session_name;
  uint64_t duration_s;     /* 0: STS default (3600) */
  char *sts_region;        /* NULL: the workspace's region */
  char *sts_endpoint;      /* NULL: AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL, or the regional endpoint */
  char *web_identity_token_file;
  char *process;           /* credential_process command line */
  struct mg_conf_creds *source; /* assume_role: base credentials; NULL = the default chain */
} mg_conf_creds_t;

/* SigV4 signing of a destination's requests (AMP: service "aps"). */
typedef struct mg_conf_sigv4 {
  bool enabled;
  char *region;
  char *service; /* default "aps" */
  mg_conf_creds_t creds;
} mg_conf_sigv4_t;

typedef struct mg_conf_dest {
  char *name;
  mg_dest_kind_t kind;
  char *url;  /* remote write endpoint */
  char *path; /* MG_DEST_FILE */
  mg_kvs_t headers;
  mg_conf_auth_t auth;
  mg_conf_tls_t tls;
  uint64_t remote_timeout_ms; /* 30000 */
  mg_conf_queue_t queue;
  mg_conf_buffer_t buffer;
  mg_conf_sigv4_t sigv4;
  mg_conf_relabels_t write_relabel_configs; /* per destination, after external labels */
  bool send_metadata;                /* true */
  uint64_t metadata_send_interval_ms; /* 60000 */
} mg_conf_dest_t;

typedef enum { MG_CONF_LUA = 0, MG_CONF_PROMYML } mg_conf_source_t;

typedef struct mg_conf {
  char *path; /* the file it came from */
  mg_conf_source_t source;
  uint64_t scrape_interval_ms; /* global default: 60000 */
  uint64_t scrape_timeout_ms;  /* global default: 10000 */
  mg_kvs_t external_labels;
  mg_conf_job_t **jobs;
  size_t njobs, jobs_cap;
  mg_conf_dest_t **dests;
  size_t ndests, dests_cap;
  /* Scale-out (command line, not the file): this replica scrapes the
   * targets whose hashmod of __address__ (after target relabeling) is
   * shard_index out of shard_count; shard_count 0 = every target. */
  uint32_t shard_index, shard_count;
  bool frozen;
} mg_conf_t;

/* Where a config error is: file, line (0 when unknown), and a message that
 * names the field and what to do. */
typedef struct mg_conf_error {
  char file[256];
  uint32_t line;
  char msg[512];
} mg_conf_error_t;

/* Builders (loaders use these). All return NULL / negative mg_err on OOM.
 * Strings are copied. */
mg_conf_t *mg_conf_new(const char *path, mg_conf_source_t source);
void mg_conf_free(mg_conf_t *c);
mg_conf_job_t *mg_conf_add_job(mg_conf_t *c, const char *name);
mg_conf_target_t *mg_conf_job_add_target(mg_conf_job_t *j, const char *address);
/* Append a discovery source with an empty MAP of options. NULL on OOM. */
mg_conf_sd_t *mg_conf_job_add_sd(mg_conf_job_t *j, const char *kind);
/* Option trees: a new node (s copied for SCALAR, ignored otherwise), NULL
 * on OOM; push to a LIST / put into a MAP take ownership of item (freed on
 * failure too) and return 0 or MG_ENOMEM. */
mg_conf_val_t *mg_conf_val_new(mg_conf_val_type_t type, const char *s, uint32_t line);
int mg_conf_val_push(mg_conf_val_t *list, mg_conf_val_t *item);
int mg_conf_val_put(mg_conf_val_t *map, const char *key, mg_conf_val_t *item);
void mg_conf_val_free(mg_conf_val_t *v);
/* Member of a MAP by name (the last one if repeated); NULL if absent or v
 * is not a MAP. */
const mg_conf_val_t *mg_conf_val_get(const mg_conf_val_t *map, const char *key);
/* Text of a SCALAR member; NULL if absent or not a scalar. */
const char *mg_conf_val_str(const mg_conf_val_t *map, const char *key);
/* Same tree: types, texts, keys in the same order (lines ignored). */
bool mg_conf_val_equal(const mg_conf_val_t *a, const mg_conf_val_t *b);
mg_conf_dest_t *mg_conf_add_dest(mg_conf_t *c, const char *name, mg_dest_kind_t kind);
/* Append an empty rule (all fields unset) to a rule list. NULL on OOM. */
mg_conf_relabel_t *mg_conf_relabels_add(mg_conf_relabels_t *rs);
int mg_conf_relabel_add_source(mg_conf_relabel_t *r, const char *label);

/* Give an assume_role spec its base credentials (allocated once; returns
 * the existing one if present). NULL on OOM. */
mg_conf_creds_t *mg_conf_creds_add_source(mg_conf_creds_t *c, mg_creds_kind_t kind);
int mg_kvs_add(mg_kvs_t *kvs, const char *name, const char *value);
/* Replace the value of name if present, else add. */
int mg_kvs_set(mg_kvs_t *kvs, const char *name, const char *value);
const char *mg_kvs_get(const mg_kvs_t *kvs, const char *name);
void mg_kvs_cleanup(mg_kvs_t *kvs);
/* Replace *slot with a copy of s (frees the old value; NULL clears). */
int mg_conf_set_str(char **slot, const char *s);
int mg_conf_set_secret(char **slot, const char *s); /* wipes the old value */

/* Fill defaults (jobs inherit global interval/timeout; queue defaults),
 * then check everything: unique job and destination names, timeout <=
 * interval, valid label names, URLs parse with http/https, auth exclusive,
 * at least one destination. On failure fills *err and returns MG_ECONFIG.
 * On success the conf is frozen. */
int mg_conf_finish(mg_conf_t *c, mg_conf_error_t *err);

/* Which part of the plan an mg_conf_finish_at error is about, so a loader
 * that kept source positions (mg_promyml) can point at a line. index is
 * the position in jobs[] or dests[]; 0 for MG_CONF_AT_GLOBAL. */
typedef enum { MG_CONF_AT_GLOBAL = 0, MG_CONF_AT_JOB, MG_CONF_AT_DEST } mg_conf_at_t;
/* mg_conf_finish that also says where the error is (at, index may be NULL). */
int mg_conf_finish_at(mg_conf_t *c, mg_conf_error_t *err, mg_conf_at_t *at, size_t *index);

/* Upper bounds checked by mg_conf_finish (a plan past them is refused). */
#define MG_CONF_MAX_JOBS 10000
#define MG_CONF_MAX_TARGETS 100000 /* per job */
#define MG_CONF_MAX_DESTS 64
#define MG_CONF_MAX_LABELS 256 /* external, per target, params, headers */
#define MG_CONF_MAX_NAME 256   /* job and destination names, bytes */

/* Two destinations with identical settings (a reload keeps the running
 * one, with its queue). */
bool mg_conf_dest_equal(const mg_conf_dest_t *a, const mg_conf_dest_t *b);

/* Print the plan for `moongate check` (secrets shown as <secret>). */
void mg_conf_print(const mg_conf_t *c, FILE *out);

/* Parse durations like Prometheus ("15s", "1m30s", "500ms", "1h"); 0 or MG_EINVAL. */
int mg_conf_parse_duration(const char *s, uint64_t *ms);
/* Parse a byte size ("50MB", "1KiB", "1024"); 0 or MG_EINVAL. */
int mg_conf_parse_bytes(const char *s, uint64_t *bytes);
/* Format ms as Prometheus does ("1m30s", "500ms", "0s"); always
 * NUL-terminates out, keeping whole terms only (32 bytes suffice for any
 * value). Returns out. */
char *mg_conf_format_duration(uint64_t ms, char *out, size_t outsz);

#endif
