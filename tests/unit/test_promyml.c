/* Unit tests for mg_promyml: realistic files (the one Prometheus ships, the
 * AWS walkthrough's, the benchmark's), every supported field, every
 * refusal with its line, type errors, YAML features (anchors, merges), and
 * the limits that keep hostile files cheap. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "mg_conf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_promyml.h"
#include "mg_test.h"

static int load(const char *yaml, mg_conf_t **out, mg_conf_error_t *err) {
  memset(err, 0, sizeof(*err));
  return mg_promyml_load_buf(yaml, strlen(yaml), "prometheus.yml", out, err);
}

/* The file must be refused at line with exactly msg. */
static void expect_error(const char *yaml, uint32_t line, const char *msg, int srcline) {
  mg_conf_t *c = (mg_conf_t *)1;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc != MG_ECONFIG) MG_FAIL_("test at line %d: rc=%d, want MG_ECONFIG (msg: %s)", srcline, rc, err.msg);
  if (c != NULL) MG_FAIL_("test at line %d: *out not NULL on error", srcline);
  if (strcmp(err.file, "prometheus.yml") != 0) MG_FAIL_("test at line %d: file \"%s\"", srcline, err.file);
  if (err.line != line) MG_FAIL_("test at line %d: error line %u, want %u (%s)", srcline, err.line, line, err.msg);
  if (strcmp(err.msg, msg) != 0) MG_FAIL_("test at line %d: message\n    \"%s\"\n want \"%s\"", srcline, err.msg, msg);
}
#define EXPECT_ERROR(yaml, line, msg) expect_error((yaml), (line), (msg), __LINE__)

static const char *const RW = "remote_write:\n  - url: http://127.0.0.1:8428/api/v1/write\n";

/* A file made of a body followed by a valid remote_write section. */
static char *with_rw(const char *body) {
  size_t n = strlen(body) + strlen(RW) + 1;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s%s", body, RW);
  return s;
}

/* The prometheus.yml Prometheus ships, with a remote_write added. */
MG_TEST(shipped_default_file) {
  const char *yaml =
      "# my global config\n"
      "global:\n"
      "  scrape_interval: 15s # Set the scrape interval to every 15 seconds.\n"
      "  evaluation_interval: 15s # Evaluate rules every 15 seconds.\n"
      "  # scrape_timeout is set to the global default (10s).\n"
      "\n"
      "# Alertmanager configuration\n"
      "alerting:\n"
      "  alertmanagers:\n"
      "    - static_configs:\n"
      "        - targets:\n"
      "          # - alertmanager:9093\n"
      "\n"
      "rule_files:\n"
      "  # - \"first_rules.yml\"\n"
      "  # - \"second_rules.yml\"\n"
      "\n"
      "scrape_configs:\n"
      "  - job_name: \"prometheus\"\n"
      "    static_configs:\n"
      "      - targets: [\"localhost:9090\"]\n"
      "remote_write:\n"
      "  - url: http://localhost:9090/api/v1/write\n";
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK(c->frozen);
  CHECK_INT(c->source, MG_CONF_PROMYML);
  CHECK_STR(c->path, "prometheus.yml");
  CHECK_U64(c->scrape_interval_ms, 15000);
  CHECK_U64(c->scrape_timeout_ms, 10000);
  REQUIRE(c->njobs == 1);
  CHECK_STR(c->jobs[0]->name, "prometheus");
  CHECK_U64(c->jobs[0]->interval_ms, 15000);
  CHECK_U64(c->jobs[0]->timeout_ms, 10000);
  REQUIRE(c->jobs[0]->ntargets == 1);
  CHECK_STR(c->jobs[0]->targets[0]->address, "localhost:9090");
  REQUIRE(c->ndests == 1);
  CHECK_STR(c->dests[0]->name, "rw-0");
  mg_conf_free(c);
}

/* As in the AWS walkthrough (Prometheus on EC2 writing to Amazon Managed
 * Service for Prometheus), with basic auth instead of sigv4. */
static const char *const AWS =
    "global:\n"
    "  scrape_interval: 15s\n"
    "  external_labels:\n"
    "    monitor: 'prometheus'\n"
    "\n"
    "scrape_configs:\n"
    "  - job_name: 'node'\n"
    "    static_configs:\n"
    "      - targets: ['localhost:9100']\n"
    "\n"
    "remote_write:\n"
    "  - url: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-123/api/v1/remote_write\n"
    "    queue_config:\n"
    "      max_samples_per_send: 1000\n"
    "      max_shards: 200\n"
    "      capacity: 2500\n";

MG_TEST(aws_walkthrough) {
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(AWS, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK_STR(mg_kvs_get(&c->external_labels, "monitor"), "prometheus");
  REQUIRE(c->njobs == 1);
  mg_conf_job_t *j = c->jobs[0];
  CHECK_STR(j->name, "node");
  CHECK_U64(j->interval_ms, 15000);
  CHECK_U64(j->timeout_ms, 10000);
  CHECK_STR(j->scheme, "http");
  CHECK_STR(j->metrics_path, "/metrics");
  CHECK(j->honor_timestamps);
  REQUIRE(c->ndests == 1);
  mg_conf_dest_t *d = c->dests[0];
  CHECK_STR(d->url, "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-123/api/v1/remote_write");
  CHECK_INT(d->queue.max_samples_per_send, 1000);
  CHECK_INT(d->queue.max_shards, 200);
  CHECK_INT(d->queue.capacity, 2500);
  CHECK_INT(d->queue.min_shards, 1);
  CHECK_U64(d->queue.batch_send_deadline_ms, 5000);
  CHECK_U64(d->remote_timeout_ms, 30000);
  mg_conf_free(c);

  /* The walkthrough signs with sigv4: the default credential chain, which
   * finds the file the SSM Agent keeps filled. */
  int rc2 = load("remote_write:\n"
                 "  - url: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write\n"
                 "    sigv4:\n"
                 "      region: us-east-1\n",
                 &c, &err);
  REQUIRE(rc2 == 0);
  CHECK(c->dests[0]->sigv4.enabled);
  CHECK_INT(c->dests[0]->sigv4.creds.kind, MG_CREDS_CHAIN);
  mg_conf_free(c);
}

/* What the shared bench harness (bench/run.sh there) writes. */
MG_TEST(bench_file) {
  char yaml[4096];
  int n = snprintf(yaml, sizeof(yaml),
                   "# generated by run.sh: T=4 S=1000 interval=10s\n"
                   "global:\n"
                   "  scrape_interval: 10s\n"
                   "  scrape_timeout: 10s\n"
                   "scrape_configs:\n"
                   "  - job_name: bench\n"
                   "    metrics_path: /metrics\n"
                   "    static_configs:\n"
                   "      - targets:\n");
  for (int t = 0; t < 4; t++) n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "          - 127.0.0.1:%d\n", 19100 + t);
  n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "remote_write:\n  - url: http://127.0.0.1:18428/api/v1/write\n");
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  REQUIRE(c->njobs == 1);
  CHECK_U64(c->jobs[0]->interval_ms, 10000);
  CHECK_U64(c->jobs[0]->timeout_ms, 10000);
  REQUIRE(c->jobs[0]->ntargets == 4);
  CHECK_STR(c->jobs[0]->targets[3]->address, "127.0.0.1:19103");
  mg_conf_free(c);

  /* With relabel=1 it adds metric_relabel_configs: kept as written, with
   * the line of each rule for the engine's messages. */
  rc = load("scrape_configs:\n"
            "  - job_name: bench\n"
            "    static_configs:\n"
            "      - targets: ['127.0.0.1:19100']\n"
            "    metric_relabel_configs:\n"
            "      - source_labels: [__name__]\n"
            "        regex: go_gc_duration_seconds.*\n"
            "        action: drop\n"
            "      - regex: id|name\n"
            "        action: labeldrop\n"
            "remote_write:\n"
            "  - url: http://127.0.0.1:18428/api/v1/write\n"
            "    write_relabel_configs:\n"
            "      - {source_labels: [a, b], separator: '-', target_label: c, replacement: '${1}x', modulus: 8,\n"
            "         action: hashmod}\n",
            &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  const mg_conf_relabels_t *m = &c->jobs[0]->metric_relabel_configs;
  REQUIRE(m->n == 2);
  REQUIRE(m->v[0]->nsource_labels == 1);
  CHECK_STR(m->v[0]->source_labels[0], "__name__");
  CHECK_STR(m->v[0]->regex, "go_gc_duration_seconds.*");
  CHECK_STR(m->v[0]->action, "drop");
  CHECK_INT(m->v[0]->line, 6);
  CHECK(m->v[0]->separator == NULL && m->v[0]->replacement == NULL);
  CHECK_STR(m->v[1]->action, "labeldrop");
  const mg_conf_relabels_t *w = &c->dests[0]->write_relabel_configs;
  REQUIRE(w->n == 1 && w->v[0]->nsource_labels == 2);
  CHECK_STR(w->v[0]->source_labels[1], "b");
  CHECK_STR(w->v[0]->separator, "-");
  CHECK_STR(w->v[0]->replacement, "${1}x");
  CHECK_U64(w->v[0]->modulus, 8);
  mg_conf_free(c);
  EXPECT_ERROR("scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: drop\n        regexp: x\n", 5,
               "scrape_configs[0].relabel_configs[0].regexp: unknown relabel_config field");
}

MG_TEST(sigv4_maps_onto_credential_sources) {
  mg_conf_t *c;
  mg_conf_error_t err;
  /* The AWS blog's file: region only -> the default chain. */
  int rc = load("remote_write:\n  - url: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write\n"
                "    sigv4: {region: us-east-1}\n",
                &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK(c->dests[0]->sigv4.enabled);
  CHECK_STR(c->dests[0]->sigv4.region, "us-east-1");
  CHECK_STR(c->dests[0]->sigv4.service, "aps");
  CHECK_INT(c->dests[0]->sigv4.creds.kind, MG_CREDS_CHAIN);
  mg_conf_free(c);
  /* role_arn on top of a profile, with moongate's external_id. */
  rc = load("remote_write:\n  - url: https://x/api/v1/write\n"
            "    sigv4: {region: eu-west-1, profile: ops, role_arn: 'arn:aws:iam::222:role/w', external_id: e1}\n",
            &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  const mg_conf_creds_t *cr = &c->dests[0]->sigv4.creds;
  CHECK_INT(cr->kind, MG_CREDS_ASSUME_ROLE);
  CHECK_STR(cr->role_arn, "arn:aws:iam::222:role/w");
  CHECK_STR(cr->external_id, "e1");
  REQUIRE(cr->source);
  CHECK_INT(cr->source->kind, MG_CREDS_PROFILE);
  CHECK_STR(cr->source->profile, "ops");
  mg_conf_free(c);
  /* Static keys. */
  rc = load("remote_write:\n  - url: https://x/api/v1/write\n"
            "    sigv4: {region: us-east-1, access_key: AKIDEXAMPLE, secret_key: s3cr3t}\n",
            &c, &err);
  REQUIRE(rc == 0);
  CHECK_INT(c->dests[0]->sigv4.creds.kind, MG_CREDS_STATIC);
  CHECK_STR(c->dests[0]->sigv4.creds.access_key_id, "AKIDEXAMPLE");
  mg_conf_free(c);
}

MG_TEST(every_field) {
  const char *yaml =
      "global:\n"
      "  scrape_interval: 30s\n"
      "  scrape_timeout: 20s\n"
      "  evaluation_interval: 1m\n"
      "  external_labels: {region: eu-west-1, cluster: c1}\n"
      "scrape_configs:\n"
      "  - job_name: full\n"
      "    scrape_interval: 1m30s\n"
      "    scrape_timeout: 45s\n"
      "    metrics_path: /probe\n"
      "    scheme: https\n"
      "    params:\n"
      "      module: [http_2xx, tcp]\n"
      "      debug: ['true']\n"
      "    honor_labels: true\n"
      "    honor_timestamps: false\n"
      "    enable_compression: false\n"
      "    body_size_limit: 10MB\n"
      "    sample_limit: 5000\n"
      "    label_limit: 30\n"
      "    label_name_length_limit: 100\n"
      "    label_value_length_limit: 200\n"
      "    basic_auth:\n"
      "      username: scraper\n"
      "      password_file: /etc/pw\n"
      "    tls_config:\n"
      "      ca_file: /etc/ca.pem\n"
      "      cert_file: /etc/c.pem\n"
      "      key_file: /etc/k.pem\n"
      "      server_name: node.internal\n"
      "      insecure_skip_verify: true\n"
      "    static_configs:\n"
      "      - targets: ['a:1', 'b:2']\n"
      "        labels: {env: prod, team: infra}\n"
      "      - targets: ['[::1]:3']\n"
      "  - job_name: bearer\n"
      "    bearer_token: s3cret-token\n"
      "    static_configs: [{targets: ['c:4']}]\n"
      "  - job_name: bearerfile\n"
      "    bearer_token_file: /run/token\n"
      "    follow_redirects: false\n"
      "    enable_http2: true\n"
      "  - job_name: authz\n"
      "    authorization:\n"
      "      type: Token\n"
      "      credentials: abc\n"
      "remote_write:\n"
      "  - url: https://rw.example.com/api/v1/write\n"
      "    name: primary\n"
      "    remote_timeout: 10s\n"
      "    headers:\n"
      "      X-Scope-OrgID: tenant-1\n"
      "    basic_auth: {username: w, password: pw}\n"
      "    tls_config: {insecure_skip_verify: false, ca_file: /ca}\n"
      "    send_exemplars: false\n"
      "    send_native_histograms: false\n"
      "    queue_config:\n"
      "      capacity: 10000\n"
      "      max_shards: 10\n"
      "      min_shards: 2\n"
      "      max_samples_per_send: 500\n"
      "      batch_send_deadline: 1s\n"
      "      min_backoff: 100ms\n"
      "      max_backoff: 10s\n"
      "      retry_on_http_429: false\n"
      "    metadata_config:\n"
      "      send: false\n"
      "      send_interval: 2m\n"
      "  - url: http://second:9090/api/v1/write\n"
      "    name: ''\n" /* unnamed, as in Prometheus */
      "    authorization: {credentials_file: /run/rw-token}\n";
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK_U64(c->scrape_interval_ms, 30000);
  CHECK_U64(c->scrape_timeout_ms, 20000);
  REQUIRE(c->external_labels.n == 2);
  CHECK_STR(c->external_labels.v[0].name, "region");
  CHECK_STR(c->external_labels.v[0].value, "eu-west-1");
  CHECK_STR(c->external_labels.v[1].name, "cluster");
  REQUIRE(c->njobs == 4);
  mg_conf_job_t *j = c->jobs[0];
  CHECK_STR(j->name, "full");
  CHECK_U64(j->interval_ms, 90000);
  CHECK_U64(j->timeout_ms, 45000);
  CHECK_STR(j->metrics_path, "/probe");
  CHECK_STR(j->scheme, "https");
  REQUIRE(j->params.n == 3);
  CHECK_STR(j->params.v[0].name, "module");
  CHECK_STR(j->params.v[0].value, "http_2xx");
  CHECK_STR(j->params.v[1].name, "module");
  CHECK_STR(j->params.v[1].value, "tcp");
  CHECK_STR(j->params.v[2].name, "debug");
  CHECK_STR(j->params.v[2].value, "true");
  CHECK(j->honor_labels);
  CHECK(!j->honor_timestamps);
  CHECK(!j->enable_compression);
  CHECK_U64(j->body_size_limit, 10ull << 20);
  CHECK_U64(j->sample_limit, 5000);
  CHECK_U64(j->label_limit, 30);
  CHECK_U64(j->label_name_length_limit, 100);
  CHECK_U64(j->label_value_length_limit, 200);
  CHECK_STR(j->auth.basic_username, "scraper");
  CHECK(j->auth.basic_password == NULL);
  CHECK_STR(j->auth.basic_password_file, "/etc/pw");
  CHECK(j->auth.auth_type == NULL);
  CHECK_STR(j->tls.ca_file, "/etc/ca.pem");
  CHECK_STR(j->tls.cert_file, "/etc/c.pem");
  CHECK_STR(j->tls.key_file, "/etc/k.pem");
  CHECK_STR(j->tls.server_name, "node.internal");
  CHECK(j->tls.insecure_skip_verify);
  REQUIRE(j->ntargets == 3);
  CHECK_STR(j->targets[0]->address, "a:1");
  CHECK_STR(j->targets[1]->address, "b:2");
  CHECK_STR(mg_kvs_get(&j->targets[1]->labels, "env"), "prod");
  CHECK_STR(mg_kvs_get(&j->targets[1]->labels, "team"), "infra");
  CHECK_STR(j->targets[2]->address, "[::1]:3");
  CHECK_INT(j->targets[2]->labels.n, 0);

  j = c->jobs[1];
  CHECK_U64(j->interval_ms, 30000);
  CHECK_U64(j->timeout_ms, 20000);
  CHECK_STR(j->auth.auth_type, "Bearer");
  CHECK_STR(j->auth.credentials, "s3cret-token");
  j = c->jobs[2];
  CHECK_STR(j->auth.auth_type, "Bearer");
  CHECK_STR(j->auth.credentials_file, "/run/token");
  CHECK_INT(j->ntargets, 0);
  j = c->jobs[3];
  CHECK_STR(j->auth.auth_type, "Token");
  CHECK_STR(j->auth.credentials, "abc");

  REQUIRE(c->ndests == 2);
  mg_conf_dest_t *d = c->dests[0];
  CHECK_STR(d->name, "primary");
  CHECK_INT(d->kind, MG_DEST_REMOTE_WRITE);
  CHECK_STR(d->url, "https://rw.example.com/api/v1/write");
  CHECK_U64(d->remote_timeout_ms, 10000);
  CHECK_STR(mg_kvs_get(&d->headers, "X-Scope-OrgID"), "tenant-1");
  CHECK_STR(d->auth.basic_username, "w");
  CHECK_STR(d->auth.basic_password, "pw");
  CHECK_STR(d->tls.ca_file, "/ca");
  CHECK(!d->tls.insecure_skip_verify);
  CHECK_INT(d->queue.capacity, 10000);
  CHECK_INT(d->queue.max_shards, 10);
  CHECK_INT(d->queue.min_shards, 2);
  CHECK_INT(d->queue.max_samples_per_send, 500);
  CHECK_U64(d->queue.batch_send_deadline_ms, 1000);
  CHECK_U64(d->queue.min_backoff_ms, 100);
  CHECK_U64(d->queue.max_backoff_ms, 10000);
  CHECK(!d->queue.retry_on_http_429);
  CHECK(!d->send_metadata);
  CHECK_U64(d->metadata_send_interval_ms, 120000);
  d = c->dests[1];
  CHECK_STR(d->name, "rw-1");
  CHECK_STR(d->auth.auth_type, "Bearer");
  CHECK_STR(d->auth.credentials_file, "/run/rw-token");
  mg_conf_free(c);
}

MG_TEST(refusals_name_key_and_line) {
  static const struct {
    const char *body;
    uint32_t line;
    const char *msg;
  } t[] = {
      /* Discovery options are the provider's to check (mg_sd_check_plan);
       * the loader only wants a mapping per source. */
      {"scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - [x.json]\n", 4,
       "scrape_configs[0].file_sd_configs[0]: expected a mapping, got a list"},
      {"scrape_configs:\n  - job_name: a\n    proxy_url: http://p:3128\n", 3,
       "scrape_configs[0].proxy_url: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    oauth2: {client_id: x}\n", 3,
       "scrape_configs[0].oauth2: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    target_limit: 10\n", 3,
       "scrape_configs[0].target_limit: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    follow_redirects: true\n", 3,
       "scrape_configs[0].follow_redirects: only false is supported: moongate does not follow redirects"},
      {"scrape_configs:\n  - job_name: a\n    tls_config: {min_version: TLS12}\n", 3,
       "scrape_configs[0].tls_config.min_version: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    basic_auth: {username_file: /u}\n", 3,
       "scrape_configs[0].basic_auth.username_file: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: [a:1]\n        extra: 1\n", 5,
       "scrape_configs[0].static_configs[0].extra: not supported by this moongate version"},
      {"rule_files: [a.yml]\n", 1, "rule_files: not supported by this moongate version"},
      {"remote_read:\n  - url: http://x/read\n", 1, "remote_read: not supported by this moongate version"},
      {"scrape_config_files: [x/*.yml]\n", 1, "scrape_config_files: not supported by this moongate version"},
      {"storage:\n  tsdb: {}\n", 1, "storage: not supported by this moongate version"},
      {"tracing: {}\n", 1, "tracing: not supported by this moongate version"},
      {"global:\n  query_log_file: /q\n", 2, "global.query_log_file: not supported by this moongate version"},
      {"global:\n  external_labels:\n    env: prod\n    host: ${HOSTNAME}\n", 4,
       "global.external_labels.host: value contains '$': environment variable expansion is not supported"},
      {"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [am:9093]\n", 4,
       "alerting.alertmanagers[0].static_configs[0]: Alertmanagers are not supported (moongate evaluates no rules "
       "and sends no alerts)"},
      {"alerting:\n  alertmanagers:\n    - scheme: https\n", 3,
       "alerting.alertmanagers[0].scheme: Alertmanagers are not supported (moongate evaluates no rules and sends no "
       "alerts)"},
      {"alerting:\n  alert_relabel_configs:\n    - action: drop\n", 2,
       "alerting.alert_relabel_configs: not supported by this moongate version"},
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    char *yaml = with_rw(t[i].body);
    REQUIRE(yaml);
    expect_error(yaml, t[i].line, t[i].msg, (int)i);
    free(yaml);
  }
  static const struct {
    const char *rw;
    uint32_t line;
    const char *msg;
  } r[] = {
      {"    sigv4: {region: us-east-1, use_fips: true}\n", 3,
       "remote_write[0].sigv4.use_fips: not supported by this moongate version"},
      {"    sigv4: {access_key: AKID}\n", 3, "remote_write[0].sigv4: access_key and secret_key go together"},
      {"    azuread: {cloud: AzurePublic}\n", 3, "remote_write[0].azuread: not supported by this moongate version"},
      {"    proxy_url: http://p\n", 3, "remote_write[0].proxy_url: not supported by this moongate version"},
      {"    send_exemplars: true\n", 3, "remote_write[0].send_exemplars: only false is supported: moongate sends no exemplars"},
      {"    send_native_histograms: true\n", 3,
       "remote_write[0].send_native_histograms: only false is supported: moongate sends no native histograms"},
      {"    queue_config: {max_retries: 3}\n", 3,
       "remote_write[0].queue_config.max_retries: not supported by this moongate version"},
      {"    queue_config:\n      sample_age_limit: 1m\n", 4,
       "remote_write[0].queue_config.sample_age_limit: not supported by this moongate version"},
      {"    metadata_config: {max_samples_per_send: 10}\n", 3,
       "remote_write[0].metadata_config.max_samples_per_send: not supported by this moongate version"},
  };
  for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "remote_write:\n  - url: http://x:1/w\n%s", r[i].rw);
    expect_error(yaml, r[i].line, r[i].msg, (int)(100 + i));
  }
}

/* Empty lists under keys moongate does not support change nothing. */
MG_TEST(empty_lists_accepted) {
  const char *yaml = "rule_files: []\n"
                     "remote_read:\n"
                     "scrape_config_files: []\n"
                     "scrape_configs:\n"
                     "  - job_name: a\n"
                     "    relabel_configs: []\n"
                     "    metric_relabel_configs:\n"
                     "    kubernetes_sd_configs: []\n"
                     "    static_configs: [{targets: [x:1]}]\n"
                     "remote_write:\n"
                     "  - url: http://x:1/w\n"
                     "    write_relabel_configs: []\n"
                     "alerting:\n"
                     "  alertmanagers: []\n";
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  CHECK_INT(rc, 0);
  mg_conf_free(c);
}

MG_TEST(type_errors) {
  static const struct {
    const char *body;
    uint32_t line;
    const char *msg;
  } t[] = {
      {"scrape_configs:\n  - job_name: a\n  - job_name: b\n    scrape_interval: 5x\n", 4,
       "scrape_configs[1].scrape_interval: invalid duration \"5x\" (use e.g. 15s, 1m30s, 500ms)"},
      {"global:\n  scrape_timeout: [1s]\n", 2, "global.scrape_timeout: expected a string, got a list"},
      {"scrape_configs:\n  - job_name: a\n    honor_labels: \"true\"\n", 3,
       "scrape_configs[0].honor_labels: expected true or false, got \"true\""},
      {"scrape_configs:\n  - job_name: a\n    honor_labels: maybe\n", 3,
       "scrape_configs[0].honor_labels: expected true or false, got \"maybe\""},
      {"scrape_configs:\n  - job_name: a\n    sample_limit: -1\n", 3,
       "scrape_configs[0].sample_limit: expected a non-negative integer, got \"-1\""},
      {"scrape_configs:\n  - job_name: a\n    sample_limit: 1.5\n", 3,
       "scrape_configs[0].sample_limit: expected a non-negative integer, got \"1.5\""},
      {"scrape_configs:\n  - job_name: a\n    sample_limit: 99999999999\n", 3,
       "scrape_configs[0].sample_limit: 99999999999 is too large (maximum 4294967295)"},
      {"scrape_configs:\n  - job_name: a\n    label_limit: '5'\n", 3,
       "scrape_configs[0].label_limit: expected a number, got \"5\""},
      {"scrape_configs:\n  - job_name: a\n    body_size_limit: 10kB\n", 3,
       "scrape_configs[0].body_size_limit: invalid size \"10kB\" (use e.g. 10MB, 512KiB)"},
      {"scrape_configs:\n  - job_name: a\n    scheme: ftp\n", 3,
       "scrape_configs[0].scheme: must be http or https, not \"ftp\""},
      {"scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: a:1\n", 4,
       "scrape_configs[0].static_configs[0].targets: expected a list, got a scalar"},
      {"scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: [[a:1]]\n", 4,
       "scrape_configs[0].static_configs[0].targets[0]: expected a string, got a list"},
      {"scrape_configs:\n  - job_name: a\n    params: {module: x}\n", 3,
       "scrape_configs[0].params.module: expected a list, got a scalar"},
      {"scrape_configs:\n  - job_name: a\n    static_configs:\n      - labels: [a]\n", 4,
       "scrape_configs[0].static_configs[0].labels: expected a mapping, got a list"},
      {"scrape_configs:\n  - job_name\n", 2, "scrape_configs[0]: expected a mapping, got a scalar"},
      {"scrape_configs: {job_name: a}\n", 1, "scrape_configs: expected a list, got a mapping"},
      {"scrape_configs:\n  - scrape_interval: 1m\n", 2, "scrape_configs[0]: job_name is missing"},
      {"global: 5\n", 1, "global: expected a mapping, got a scalar"},
      {"scrape_configs:\n  - job_name: a\n    job_name: b\n", 3, "scrape_configs[0]: key \"job_name\" given twice"},
      {"scrape_configs:\n  - job_name: a\n    basic_auth: {password: x}\n    bearer_token: y\n", 4,
       "scrape_configs[0]: at most one of basic_auth and bearer_token may be set"},
      {"scrape_configs:\n  - job_name: a\n    authorization: {credentials: x}\n    bearer_token: y\n", 4,
       "scrape_configs[0]: bearer_token cannot be combined with authorization"},
      {"scrape_configs:\n  - job_name: a\n    bearer_token: x\n    bearer_token_file: y\n", 4,
       "scrape_configs[0]: at most one of bearer_token and bearer_token_file may be set"},
      {"scrape_configs:\n  - job_name: a\n    ? [x]\n    : 1\n", 3, "scrape_configs[0]: mapping keys must be strings"},
      {"scrape_configs:\n  - job_name: \"a\\0b\"\n", 2, "scrape_configs[0].job_name: string contains a NUL byte"},
      {"scrape_configs:\n  - job_name: a\n    \"\": 1\n", 3, "scrape_configs[0].\"\": not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    \"x\\ny\": 1\n", 3, "scrape_configs[0].x?y: not supported by this moongate version"},
      {"scrape_configs:\n  - job_name: a\n    honor_labels: \"a\\r\\nb\"\n", 3,
       "scrape_configs[0].honor_labels: expected true or false, got \"a??b\""},
      {"global:\n  scrape_interval: 1h\n  scrape_timeout: 2h\n", 0,
       "global: scrape_timeout (2h) greater than scrape_interval (1h)"},
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    char *yaml = with_rw(t[i].body);
    REQUIRE(yaml);
    expect_error(yaml, t[i].line, t[i].msg, (int)i);
    free(yaml);
  }
  static const struct {
    const char *rw;
    uint32_t line;
    const char *msg;
  } r[] = {
      {"    queue_config: {capacity: 0}\n", 3, "remote_write[0].queue_config.capacity: must be at least 1"},
      {"    queue_config: {max_shards: 5000000000}\n", 3,
       "remote_write[0].queue_config.max_shards: 5000000000 is too large (maximum 4294967295)"},
      {"    queue_config: {min_backoff: 0s}\n", 3, "remote_write[0].queue_config.min_backoff: must be greater than 0"},
      {"    queue_config: {retry_on_http_429: 1}\n", 3,
       "remote_write[0].queue_config.retry_on_http_429: expected true or false, got \"1\""},
      {"    remote_timeout: 30\n", 3,
       "remote_write[0].remote_timeout: invalid duration \"30\" (use e.g. 15s, 1m30s, 500ms)"},
      {"    headers: [a]\n", 3, "remote_write[0].headers: expected a mapping, got a list"},
      {"    metadata_config: {send: 'no'}\n", 3,
       "remote_write[0].metadata_config.send: expected true or false, got \"no\""},
  };
  for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "remote_write:\n  - url: http://x:1/w\n%s", r[i].rw);
    expect_error(yaml, r[i].line, r[i].msg, (int)(100 + i));
  }
  EXPECT_ERROR("remote_write:\n  - name: a\n", 2, "remote_write[0]: url is missing");
  EXPECT_ERROR("- a\n", 1, "expected a mapping at the top of the file, got a list");
  EXPECT_ERROR("just text\n", 1, "expected a mapping at the top of the file, got a scalar");
  EXPECT_ERROR("remote_write:\n  - url: http://x:1/w\n  - 5\n", 3, "remote_write[1]: expected a mapping, got a scalar");
}

/* Checks made by mg_conf_finish point at the job or remote_write entry. */
MG_TEST(finish_errors_get_entry_lines) {
  EXPECT_ERROR("scrape_configs:\n"
               "  - job_name: node\n"
               "    static_configs: [{targets: [a:1]}]\n"
               "  - job_name: node\n"
               "    static_configs: [{targets: [b:1]}]\n"
               "remote_write:\n  - url: http://x:1/w\n",
               4, "job \"node\": job_name used by more than one scrape job");
  EXPECT_ERROR("scrape_configs:\n"
               "  - job_name: node\n"
               "    scrape_interval: 10s\n"
               "    scrape_timeout: 15s\n"
               "remote_write:\n  - url: http://x:1/w\n",
               2, "job \"node\": scrape_timeout (15s) greater than scrape_interval (10s)");
  EXPECT_ERROR("scrape_configs:\n"
               "  - job_name: node\n"
               "    static_configs:\n"
               "      - targets: ['http://a:9100/metrics']\n"
               "remote_write:\n  - url: http://x:1/w\n",
               2,
               "job \"node\": target \"http://a:9100/metrics\": give host:port without a scheme (set scheme: https "
               "instead)");
  EXPECT_ERROR("scrape_configs:\n"
               "  - job_name: node\n"
               "    static_configs:\n"
               "      - targets: ['a']\n"
               "remote_write:\n  - url: http://x:1/w\n",
               2, "job \"node\": target \"a\": not host:port: missing port");
  EXPECT_ERROR("scrape_configs:\n"
               "  - job_name: node\n"
               "    static_configs:\n"
               "      - targets: ['a:1']\n"
               "        labels: {'bad-name': x}\n"
               "remote_write:\n  - url: http://x:1/w\n",
               2,
               "job \"node\": target \"a:1\": invalid label name \"bad-name\" (must match [a-zA-Z_][a-zA-Z0-9_]*)");
  EXPECT_ERROR("remote_write:\n"
               "  - url: http://x:1/w\n"
               "    name: same\n"
               "  - url: http://y:1/w\n"
               "    name: same\n",
               4, "destination \"same\": name used by more than one destination");
  EXPECT_ERROR("remote_write:\n"
               "  - url: ftp://x/w\n",
               2, "destination \"rw-0\": url must start with http:// or https://");
  EXPECT_ERROR("remote_write:\n"
               "  - url: http://x:1/w\n"
               "  - url: http://y:1/w\n"
               "    basic_auth: {username: u}\n"
               "    authorization: {credentials: t}\n",
               3, "destination \"rw-1\": at most one of basic_auth and authorization may be set");
  EXPECT_ERROR("remote_write:\n"
               "  - url: http://x:1/w\n"
               "    headers: {Authorization: Bearer x}\n",
               2, "destination \"rw-0\": headers: set Authorization through basic_auth or authorization");
  EXPECT_ERROR("scrape_configs:\n  - job_name: a\n", 0, "no destination: add a remote_write entry");
  EXPECT_ERROR("", 0, "no destination: add a remote_write entry");
  EXPECT_ERROR("# only a comment\n", 0, "no destination: add a remote_write entry");
}

MG_TEST(yaml_syntax_errors) {
  mg_conf_t *c;
  mg_conf_error_t err;
  CHECK_INT(load("global:\n  scrape_interval: 15s\n scrape_timeout: 1s\n", &c, &err), MG_ECONFIG);
  CHECK(c == NULL);
  CHECK_INT(err.line, 3);
  CHECK(strncmp(err.msg, "YAML: ", 6) == 0);
  CHECK_INT(load("a: [1, 2\nb: 3\n", &c, &err), MG_ECONFIG);
  CHECK(err.line >= 2);
  CHECK(strncmp(err.msg, "YAML: ", 6) == 0);
  CHECK_INT(load("a: *nope\n", &c, &err), MG_ECONFIG);
  CHECK_INT(err.line, 1);
  CHECK_INT(load("global: {}\n---\nglobal: {}\n", &c, &err), MG_ECONFIG);
  CHECK_INT(err.line, 3);
  CHECK_STR(err.msg, "only one YAML document is supported (found a second one)");
  CHECK_INT(load("a: \"\t\x01\"\n", &c, &err), MG_ECONFIG);
}

MG_TEST(anchors_aliases_merges) {
  const char *yaml = "common: &common\n"
                     "  scrape_interval: 5s\n"
                     "  metrics_path: /m\n"
                     "  static_configs: &sc [{targets: ['a:1', 'b:2']}]\n";
  /* A top-level "common" key is not Prometheus; use it inside a job list. */
  EXPECT_ERROR(yaml, 1, "common: not supported by this moongate version");

  const char *ok = "scrape_configs:\n"
                   "  - &base\n"
                   "    job_name: one\n"
                   "    scrape_interval: 5s\n"
                   "    metrics_path: /m\n"
                   "    static_configs: &sc [{targets: ['a:1', 'b:2'], labels: &l {env: prod}}]\n"
                   "  - <<: *base\n"
                   "    job_name: two\n"
                   "  - <<: [*base]\n"
                   "    job_name: three\n"
                   "    metrics_path: /own\n"
                   "    static_configs:\n"
                   "      - targets: [c:3]\n"
                   "        labels: *l\n"
                   "remote_write:\n"
                   "  - url: &u http://x:1/w\n"
                   "  - url: *u\n"
                   "    name: copy\n";
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(ok, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  REQUIRE(c->njobs == 3);
  CHECK_STR(c->jobs[1]->name, "two");
  CHECK_U64(c->jobs[1]->interval_ms, 5000);
  CHECK_STR(c->jobs[1]->metrics_path, "/m");
  CHECK_INT(c->jobs[1]->ntargets, 2);
  CHECK_STR(mg_kvs_get(&c->jobs[1]->targets[1]->labels, "env"), "prod");
  CHECK_STR(c->jobs[2]->metrics_path, "/own");
  CHECK_U64(c->jobs[2]->interval_ms, 5000);
  REQUIRE(c->jobs[2]->ntargets == 1);
  CHECK_STR(c->jobs[2]->targets[0]->address, "c:3");
  CHECK_STR(mg_kvs_get(&c->jobs[2]->targets[0]->labels, "env"), "prod");
  REQUIRE(c->ndests == 2);
  CHECK_STR(c->dests[1]->url, "http://x:1/w");
  mg_conf_free(c);

  /* An alias that points into its own anchor must not loop. */
  EXPECT_ERROR("scrape_configs:\n  - &a\n    job_name: x\n    <<: *a\nremote_write:\n  - url: http://x:1/w\n", 2,
               "scrape_configs[0]: merge keys (<<) nested too deeply or recursive");
  EXPECT_ERROR("scrape_configs: &a [*a]\n", 1, "scrape_configs[0]: expected a mapping, got a list");
  EXPECT_ERROR("scrape_configs:\n  - <<: 5\n    job_name: x\n", 2,
               "scrape_configs[0]: merge key (<<) needs a mapping");
}

/* Aliases that repeat a big list: the limits apply to what is built,
 * not to what the file spells out. */
MG_TEST(aliases_count_like_copies) {
  char big[8192];
  int n = snprintf(big, sizeof(big), "scrape_configs:\n  - job_name: j0\n    static_configs: &s0\n");
  n += snprintf(big + n, sizeof(big) - (size_t)n, "      - targets: &t [");
  for (int i = 0; i < 64; i++) n += snprintf(big + n, sizeof(big) - (size_t)n, "%s'h:%d'", i ? "," : "", 1000 + i);
  n += snprintf(big + n, sizeof(big) - (size_t)n, "]\n");
  for (int i = 0; i < 63; i++) n += snprintf(big + n, sizeof(big) - (size_t)n, "      - targets: *t\n");
  for (int j = 1; j < 40; j++)
    n += snprintf(big + n, sizeof(big) - (size_t)n, "  - {job_name: j%d, static_configs: *s0}\n", j);
  n += snprintf(big + n, sizeof(big) - (size_t)n, "remote_write:\n  - url: http://x:1/w\n");
  REQUIRE((size_t)n < sizeof(big));
  mg_conf_t *c;
  mg_conf_error_t err;
  /* 40 jobs of 4096 targets are built, then each repeated target is found. */
  CHECK_INT(load(big, &c, &err), MG_ECONFIG);
  CHECK_STR(err.msg, "job \"j0\": target \"h:1000\" listed twice with the same labels");
  CHECK_INT(err.line, 2);
}

/* "Billion laughs" through merge keys: 7 levels of 16 merge sources would
 * be 16^7 mapping visits; the work budget stops it early. */
MG_TEST(merge_bomb_is_cheap) {
  char yaml[8192];
  int n = snprintf(yaml, sizeof(yaml), "scrape_configs:\n  - job_name: x\n    m0: &m0 {a: 1, b: 2}\n");
  for (int lvl = 1; lvl < 7; lvl++) {
    n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "    m%d: &m%d {<<: [", lvl, lvl);
    for (int i = 0; i < 16; i++) n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "%s*m%d", i ? "," : "", lvl - 1);
    n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "]}\n");
  }
  n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "    <<: *m6\n");
  REQUIRE((size_t)n < sizeof(yaml));
  mg_conf_t *c;
  mg_conf_error_t err;
  CHECK_INT(load(yaml, &c, &err), MG_ECONFIG);
  CHECK(strstr(err.msg, "document too complex") != NULL);
}

MG_TEST(work_budget) {
  /* 2000 jobs each aliasing 33 static_configs of 1024 targets: 67M targets
   * would be built without the budget (and 10^5 per job is refused). */
  size_t cap = 4 << 20;
  char *big = malloc(cap);
  REQUIRE(big);
  size_t n = (size_t)snprintf(big, cap, "scrape_configs:\n  - job_name: j0\n    static_configs: &s\n");
  n += (size_t)snprintf(big + n, cap - n, "      - targets: &t [");
  for (int i = 0; i < 1024; i++) n += (size_t)snprintf(big + n, cap - n, "%s'h%d:1'", i ? "," : "", i);
  n += (size_t)snprintf(big + n, cap - n, "]\n");
  for (int i = 0; i < 32; i++) n += (size_t)snprintf(big + n, cap - n, "      - labels: {a: b}\n        targets: *t\n");
  for (int j = 1; j < 2000; j++) n += (size_t)snprintf(big + n, cap - n, "  - {job_name: j%d, static_configs: *s}\n", j);
  n += (size_t)snprintf(big + n, cap - n, "remote_write:\n  - url: http://x:1/w\n");
  REQUIRE(n < cap);
  mg_conf_t *c;
  mg_conf_error_t err;
  CHECK_INT(load(big, &c, &err), MG_ECONFIG);
  CHECK(strstr(err.msg, "document too complex") != NULL);
  CHECK(err.line > 0);

  /* A large real file stays well within the budget: 100k targets. */
  n = (size_t)snprintf(big, cap, "scrape_configs:\n");
  for (int j = 0; j < 20; j++) {
    n += (size_t)snprintf(big + n, cap - n, "  - job_name: j%d\n    static_configs:\n      - labels: {a: b, c: d}\n"
                                            "        targets:\n", j);
    for (int t = 0; t < 5000; t++) n += (size_t)snprintf(big + n, cap - n, "          - 10.%d.%d.%d:9100\n", j, t / 250, t % 250);
  }
  n += (size_t)snprintf(big + n, cap - n, "remote_write:\n  - url: http://x:1/w\n");
  REQUIRE(n < cap);
  int rc = load(big, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK_INT(c->njobs, 20);
  CHECK_INT(c->jobs[19]->ntargets, 5000);
  mg_conf_free(c);
  free(big);
}

static char *print_to_string(const mg_conf_t *c) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) return NULL;
  mg_conf_print(c, f);
  fclose(f);
  return text;
}

MG_TEST(print_has_no_secrets) {
  const char *yaml = "scrape_configs:\n"
                     "  - job_name: a\n"
                     "    bearer_token: job-token-SECRET1\n"
                     "    static_configs: [{targets: [x:1]}]\n"
                     "  - job_name: b\n"
                     "    basic_auth: {username: me, password: job-pass-SECRET2}\n"
                     "remote_write:\n"
                     "  - url: http://x:1/w\n"
                     "    headers: {X-Api-Key: hdr-SECRET3}\n"
                     "    authorization: {type: Token, credentials: rw-SECRET4}\n";
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = load(yaml, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  char *text = print_to_string(c);
  REQUIRE(text);
  CHECK(strstr(text, "SECRET") == NULL);
  CHECK(strstr(text, "<secret>") != NULL);
  CHECK(strstr(text, "username=\"me\"") != NULL);
  CHECK(strstr(text, "(prometheus.yml)") != NULL);
  free(text);
  mg_conf_free(c);

  /* An error message never echoes a secret either. */
  EXPECT_ERROR("remote_write:\n  - url: http://user:SECRET@x:1/w\n", 2,
               "destination \"rw-0\": url must not contain user:password@ (use basic_auth)");
}

static char *write_temp(const char *content, size_t len) {
  static char path[64];
  snprintf(path, sizeof(path), "/tmp/mg_promyml_XXXXXX");
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  if (len && write(fd, content, len) != (ssize_t)len) {
    close(fd);
    return NULL;
  }
  close(fd);
  return path;
}

MG_TEST(load_file) {
  char *path = write_temp(AWS, strlen(AWS));
  REQUIRE(path);
  mg_conf_t *c;
  mg_conf_error_t err;
  int rc = mg_promyml_load(path, &c, &err);
  if (rc) MG_FAIL_("%u: %s", err.line, err.msg);
  REQUIRE(rc == 0);
  CHECK_STR(c->path, path);
  CHECK_INT(c->njobs, 1);
  mg_conf_free(c);
  unlink(path);

  const char *bad = "scrape_configs:\n  - job_name: a\n    honor_labels: 3\n";
  path = write_temp(bad, strlen(bad));
  REQUIRE(path);
  CHECK_INT(mg_promyml_load(path, &c, &err), MG_ECONFIG);
  CHECK_STR(err.file, path);
  CHECK_INT(err.line, 3);
  unlink(path);

  CHECK_INT(mg_promyml_load("/nonexistent/prometheus.yml", &c, &err), MG_EIO);
  CHECK(c == NULL);
  CHECK_STR(err.file, "/nonexistent/prometheus.yml");
  CHECK(strstr(err.msg, "cannot open") != NULL);

  path = write_temp("", 0);
  REQUIRE(path);
  REQUIRE(truncate(path, (off_t)MG_PROMYML_MAX_BYTES + 1) == 0);
  CHECK_INT(mg_promyml_load(path, &c, &err), MG_ETOOBIG);
  CHECK_STR(err.msg, "file larger than 16 MiB");
  unlink(path);

  CHECK_INT(mg_promyml_load_buf("x", (size_t)MG_PROMYML_MAX_BYTES + 1, "big.yml", &c, &err), MG_ETOOBIG);
}

/* The fuzz seeds are real-looking files: all but refused.yml must import. */
MG_TEST(fuzz_seeds_import) {
  const char *src = getenv("MG_SOURCE_DIR");
  REQUIRE(src);
  static const char *const seeds[] = {"shipped.yml", "aws.yml", "bench.yml", "full.yml", "anchors.yml"};
  char path[1024];
  for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/promyml/%s", src, seeds[i]);
    mg_conf_t *c;
    mg_conf_error_t err;
    int rc = mg_promyml_load(path, &c, &err);
    if (rc) MG_FAIL_("%s:%u: %s", err.file, err.line, err.msg);
    mg_conf_free(c);
  }
  snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/promyml/refused.yml", src);
  mg_conf_t *c;
  mg_conf_error_t err;
  CHECK_INT(mg_promyml_load(path, &c, &err), MG_ECONFIG);
  CHECK_INT(err.line, 8);
  CHECK_STR(err.msg, "remote_write[0].azuread: not supported by this moongate version");
}

/* Fail each allocation in turn: every failure is reported as MG_ENOMEM
 * and nothing leaks (ASan). libyaml's own allocations are not covered. */
MG_TEST(allocation_failures) {
  int ok_at = 0;
  for (int n = 1; n < 2000 && !ok_at; n++) {
    mg_conf_t *c;
    mg_conf_error_t err;
    mg_mem_fail_at((uint64_t)n);
    int rc = load(AWS, &c, &err);
    mg_mem_fail_at(0);
    if (rc == 0) {
      ok_at = n;
      mg_conf_free(c);
    } else {
      CHECK_INT(rc, MG_ENOMEM);
      CHECK(strstr(err.msg, "out of memory") != NULL);
      CHECK(c == NULL);
    }
  }
  CHECK(ok_at > 20);
}

MG_TEST_MAIN()
