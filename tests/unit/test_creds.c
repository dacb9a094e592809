/* Tests for mg_creds without network peers: the document parsers, the
 * rejection classifier, static/env sources, configuration errors, the
 * default chain with nothing to find (and credentials appearing later),
 * shared files (formats, precedence, errors with file and line, in-place
 * and rename rotation noticed within a second, half-written files never
 * used, the stat() fallback), credential_process (cached until near
 * expiry, failures, timeout kills the process group), invalidate and the
 * waiter contract. Every test closes its loop; logs are captured at debug
 * level and checked for every secret the test saw. */
#include "creds_testlib.h"

__attribute__((constructor)) static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  tl_capture_logs();
}

static mg_creds_opts_t fast_opts(void) {
  mg_creds_opts_t o = {0};
  o.retry_min_ms = 100;
  o.retry_max_ms = 1000;
  return o;
}

/* ------------------------------------------------------------ parsers */

MG_TEST(parse_time) {
  static const struct {
    const char *s;
    long long ms;
  } good[] = {
      {"2024-05-01T16:00:00Z", 1714579200000LL},   {"1970-01-01T00:00:00Z", 0},
      {"2024-02-29T23:59:59.123Z", 1709251199123LL}, {"2024-05-01T18:00:00+02:00", 1714579200000LL},
      {"2024-05-01T12:00:00-04:00", 1714579200000LL}, {"2024-05-01 16:00:00z", 1714579200000LL},
      {"2024-05-01T16:00:00.5Z", 1714579200500LL},   {"2016-12-31T23:59:60Z", 1483228799000LL},
      {"2024-05-01T16:00:00.123456789Z", 1714579200123LL},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    int64_t ms = -1;
    CHECK_INT(mg_creds_parse_time(good[i].s, strlen(good[i].s), &ms), 0);
    CHECK_INT(ms, good[i].ms);
  }
  static const char *bad[] = {"2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-05-01T24:00:00Z",
                              "2024-05-01T16:00:00",  "2024-05-01T16:00:00.Z", "2024-05-01T16:00:00+0200",
                              "2024-05-01T16:00:00Zx", "1969-12-31T23:59:59Z", "",
                              "2024-5-01T16:00:00Z",  "2024-05-01X16:00:00Z", "2024-05-01T16:60:00Z",
                              "2024-05-01T16:00:00.1234567890Z"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t ms;
    if (mg_creds_parse_time(bad[i], strlen(bad[i]), &ms) != MG_EPARSE) MG_FAIL_("accepted \"%s\"", bad[i]);
  }
}

static int parse_doc(mg_creds_doc_t d, const char *json, mg_creds_value_t **v, char *msg) {
  msg[0] = '\0';
  int rc = mg_creds_parse_json(d, json, strlen(json), 1714579200000LL, "k", "src", v, msg, 256);
  if (strstr(msg, "SECRETSECRET") || strstr(msg, "TOKENTOKEN")) MG_FAIL_("secret in message: %s", msg);
  return rc;
}

MG_TEST(parse_json_documents) {
  char msg[256];
  mg_creds_value_t *v = NULL;
  CHECK_INT(parse_doc(MG_CREDS_DOC_IMDS,
                      "{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAIMDS\",\"SecretAccessKey\":"
                      "\"SECRETSECRET1\",\"Token\":\"TOKENTOKEN1\",\"Expiration\":\"2024-05-01T22:00:00Z\"}",
                      &v, msg),
            0);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIAIMDS");
  CHECK_STR(v->secret_access_key, "SECRETSECRET1");
  CHECK_STR(v->session_token, "TOKENTOKEN1");
  CHECK_INT(v->expires_ms, 1714579200000LL + 6 * 3600 * 1000);
  CHECK_STR(v->kind, "k");
  CHECK_STR(v->source, "src");
  CHECK(mg_creds_value_ref(v) == v);
  mg_creds_value_unref(v);
  mg_creds_value_unref(v);
  mg_creds_value_unref(NULL);
  CHECK(mg_creds_value_ref(NULL) == NULL);
  /* credential_process: Version 1, optional token and expiration. */
  CHECK_INT(parse_doc(MG_CREDS_DOC_PROCESS,
                      "{\"Version\": 1, \"AccessKeyId\": \"AKIAPROC\", \"SecretAccessKey\": \"SECRETSECRET2\"}", &v,
                      msg),
            0);
  REQUIRE(v);
  CHECK(v->session_token == NULL);
  CHECK_INT(v->expires_ms, 0);
  mg_creds_value_unref(v);
  static const struct {
    mg_creds_doc_t d;
    const char *json;
    int rc;
    const char *msg;
  } bad[] = {
      {MG_CREDS_DOC_IMDS,
       "{\"Code\":\"AssumeRoleUnauthorizedAccess\",\"AccessKeyId\":\"ASIA1\",\"SecretAccessKey\":\"SECRETSECRET\","
       "\"Token\":\"TOKENTOKEN\",\"Expiration\":\"2024-05-01T22:00:00Z\"}",
       MG_ECREDS, "instance metadata answered Code=AssumeRoleUnauthorizedAccess"},
      {MG_CREDS_DOC_ECS, "{\"AccessKeyId\":\"ASIA1\",\"SecretAccessKey\":\"SECRETSECRET\",\"Token\":\"TOKENTOKEN\"}",
       MG_ECREDS, "Expiration is missing"},
      {MG_CREDS_DOC_IMDS,
       "{\"AccessKeyId\":\"AKIA1\",\"SecretAccessKey\":\"SECRETSECRET\",\"Token\":null,\"Expiration\":"
       "\"2024-05-01T22:00:00Z\"}",
       MG_ECREDS, "Token is missing"},
      {MG_CREDS_DOC_ECS,
       "{\"AccessKeyId\":\"ASIA1\",\"SecretAccessKey\":\"SECRETSECRET\",\"Token\":\"TOKENTOKEN\",\"Expiration\":"
       "\"2024-05-01T15:59:59Z\"}",
       MG_ECREDS, "credentials expired already (expiration 2024-05-01T15:59:59Z)"},
      {MG_CREDS_DOC_ECS,
       "{\"AccessKeyId\":\"ASIA1\",\"SecretAccessKey\":\"SECRETSECRET\",\"Token\":\"TOKENTOKEN\",\"Expiration\":"
       "\"tomorrow\"}",
       MG_EPARSE, "Expiration is not an RFC 3339 time"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 2, \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRETSECRET\"}",
       MG_ECREDS, "\"Version\": 1 is missing or another version"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": \"1\", \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRETSECRET\"}",
       MG_ECREDS, "\"Version\": 1 is missing or another version"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"AccessKeyId\": \"ASIA1\", \"SecretAccessKey\": \"SECRETSECRET\"}",
       MG_ECREDS, "SessionToken is missing for a temporary access key id (ASIA...)"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"SecretAccessKey\": \"SECRETSECRET\"}", MG_ECREDS,
       "AccessKeyId is missing"},
      {MG_CREDS_DOC_PROCESS,
       "{\"Version\": 1, \"AccessKeyId\": \"AKIA1\", \"AccessKeyId\": \"AKIA2\", \"SecretAccessKey\": "
       "\"SECRETSECRET\"}",
       MG_EPARSE, "a credential field appears twice"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"AccessKeyId\": 5, \"SecretAccessKey\": \"SECRETSECRET\"}", MG_EPARSE,
       "a credential field is not a string"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"AccessKeyId\": \"AKIA 1\", \"SecretAccessKey\": \"SECRETSECRET\"}",
       MG_ECREDS, "access key id is empty, too long or has characters other than A-Z a-z 0-9 - _ ."},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRET SECRET\"}",
       MG_ECREDS, "secret access key is empty, longer than 256 bytes or not printable ASCII"},
      {MG_CREDS_DOC_PROCESS, "{\"Version\": 1, \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRETSECRET\"",
       MG_EPARSE, "not a JSON object (byte 72: unterminated object)"},
      {MG_CREDS_DOC_PROCESS, "SECRETSECRET", MG_EPARSE, "not a JSON object (byte 0: expected an object)"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = NULL;
    int rc = parse_doc(bad[i].d, bad[i].json, &v, msg);
    if (rc != bad[i].rc) MG_FAIL_("case %zu: rc %s, want %s (%s)", i, mg_err_name(rc), mg_err_name(bad[i].rc), msg);
    CHECK_STR(msg, bad[i].msg);
    CHECK(v == NULL);
  }
}

MG_TEST(parse_sts_answers) {
  char msg[512];
  mg_creds_value_t *v = NULL;
  const char *ok = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>"
                   "<Credentials><AccessKeyId>ASIASTS</AccessKeyId><SecretAccessKey>SECRETSECRET3</SecretAccessKey>"
                   "<SessionToken>TOKENTOKEN3</SessionToken><Expiration>2024-05-01T17:00:00.123Z</Expiration>"
                   "</Credentials></AssumeRoleResult></AssumeRoleResponse>";
  CHECK_INT(mg_creds_parse_sts("AssumeRole", 200, ok, strlen(ok), 1714579200000LL, "assume_role", "s", &v, msg,
                               sizeof msg),
            0);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIASTS");
  CHECK_STR(v->session_token, "TOKENTOKEN3");
  CHECK_INT(v->expires_ms, 1714582800123LL);
  mg_creds_value_unref(v);
  v = NULL;
  /* The same document is not a web identity answer. */
  CHECK_INT(mg_creds_parse_sts("AssumeRoleWithWebIdentity", 200, ok, strlen(ok), 1714579200000LL, "w", "s", &v, msg,
                               sizeof msg),
            MG_ECREDS);
  CHECK_STR(msg, "STS AssumeRoleWithWebIdentity: answer AccessKeyId is missing");
  const char *err = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
                    "<Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/x is not authorized to perform: "
                    "sts:AssumeRole on resource: arn:aws:iam::2:role/y</Message></Error><RequestId>r</RequestId>"
                    "</ErrorResponse>";
  CHECK_INT(mg_creds_parse_sts("AssumeRole", 403, err, strlen(err), 0, "k", "s", &v, msg, sizeof msg), MG_ECREDS);
  CHECK_STR(msg, "STS AssumeRole: HTTP 403 AccessDenied: User: arn:aws:iam::1:user/x is not authorized to perform: "
                 "sts:AssumeRole on resource: arn:aws:iam::2:role/y");
  const char *notoken = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>AKIASTS</AccessKeyId>"
                        "<SecretAccessKey>SECRETSECRET4</SecretAccessKey><Expiration>2024-05-01T17:00:00Z</Expiration>"
                        "</Credentials></AssumeRoleResult></AssumeRoleResponse>";
  CHECK_INT(mg_creds_parse_sts("AssumeRole", 200, notoken, strlen(notoken), 1714579200000LL, "k", "s", &v, msg,
                               sizeof msg),
            MG_ECREDS);
  CHECK_STR(msg, "STS AssumeRole: answer SessionToken is missing");
  CHECK_INT(mg_creds_parse_sts("AssumeRole", 503, "Service Unavailable", 19, 0, "k", "s", &v, msg, sizeof msg),
            MG_ESTATUS);
  CHECK_STR(msg, "STS AssumeRole: HTTP 503 (body is not an AWS error document)");
  CHECK_INT(mg_creds_parse_sts("AssumeRole", 200, "<x>SECRETSECRET", 15, 0, "k", "s", &v, msg, sizeof msg), MG_EPARSE);
  CHECK_STR(msg, "STS AssumeRole: answer is not XML (line 1: unterminated element)");
  CHECK(v == NULL);
}

MG_TEST(rejection_classifier) {
  CHECK(mg_creds_is_rejection(403, "ExpiredTokenException", NULL, 0));
  CHECK(mg_creds_is_rejection(403, "UnrecognizedClientException:http://internal.amazon.com/coral/", NULL, 0));
  CHECK(mg_creds_is_rejection(403, "InvalidSignatureException", NULL, 0));
  const char *j = "{\"message\":\"The security token included in the request is expired\"}";
  CHECK(mg_creds_is_rejection(403, NULL, j, strlen(j)));
  const char *x = "<ErrorResponse><Error><Code>InvalidClientTokenId</Code></Error></ErrorResponse>";
  CHECK(mg_creds_is_rejection(403, NULL, x, strlen(x)));
  const char *t = "{\"__type\":\"com.amazon.coral.service#UnrecognizedClientException\"}";
  CHECK(mg_creds_is_rejection(400, "", t, strlen(t)));
  const char *d = "{\"message\":\"User: x is not authorized to perform: aps:RemoteWrite\"}";
  CHECK(!mg_creds_is_rejection(403, "AccessDeniedException", d, strlen(d)));
  CHECK(!mg_creds_is_rejection(500, "ExpiredTokenException", NULL, 0));
  CHECK(!mg_creds_is_rejection(429, NULL, j, strlen(j)));
  CHECK(!mg_creds_is_rejection(403, "ExpiredTokenExceptionX", NULL, 0));
}

/* ------------------------------------------------------------ static, env, configuration */

typedef struct env {
  uv_loop_t loop;
  mg_http_client_t *http;
  mg_creds_t *c;
  int err;
} env_t;

static bool start(env_t *e, const mg_conf_creds_t *conf, const char *name, const mg_creds_opts_t *o) {
  uv_loop_init(&e->loop);
  e->http = mg_http_client_new(&e->loop, NULL);
  e->c = mg_creds_new(&e->loop, e->http, conf, "us-east-1", name, o, &e->err);
  return e->c != NULL;
}

static void stop(env_t *e) { tl_teardown(&e->loop, e->c, e->http); }

MG_TEST(static_and_environment) {
  tl_clean_env();
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_STATIC, .access_key_id = "AKIDSTATIC0001",
                          .secret_access_key = "staticsecretvalue0000000001"};
  tl_secret(conf.secret_access_key);
  REQUIRE(start(&e, &conf, "static-test", NULL));
  CHECK(mg_creds_current(e.c) == NULL); /* nothing synchronous: the first fetch runs on the loop */
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 2000);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "AKIDSTATIC0001");
  CHECK_STR(v->source, "static configuration");
  CHECK_STR(v->kind, "static");
  CHECK_INT(v->expires_ms, 0);
  mg_creds_info_t info;
  mg_creds_describe(e.c, &info);
  CHECK(info.available);
  CHECK_STR(info.access_key_id, "AKID****");
  CHECK_STR(info.source, "static configuration");
  CHECK_STR(info.last_error, "");
  CHECK_U64(info.refresh_successes, 1);
  mg_buf_t m;
  mg_buf_init(&m, 0);
  mg_metrics_render(&m);
  CHECK(strstr(m.data, "moongate_aws_credentials_refresh_total{credentials=\"static-test\",source=\"static\","
                       "result=\"success\"} 1\n") != NULL);
  CHECK(strstr(m.data, "moongate_aws_credentials_expiry_timestamp_seconds{credentials=\"static-test\"} 0\n") != NULL);
  mg_buf_cleanup(&m);
  mg_creds_value_unref(v);
  stop(&e);

  setenv("AWS_ACCESS_KEY_ID", "ASIAENVIRONMENT1", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "envsecretvalue00000000000001", 1);
  setenv("AWS_SESSION_TOKEN", "envsessiontoken000000000000000001", 1);
  tl_secret("envsecretvalue00000000000001");
  tl_secret("envsessiontoken000000000000000001");
  conf = (mg_conf_creds_t){.kind = MG_CREDS_ENV};
  REQUIRE(start(&e, &conf, "env-test", NULL));
  v = tl_get(&e.loop, e.c, 2000);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIAENVIRONMENT1");
  CHECK_STR(v->session_token, "envsessiontoken000000000000000001");
  CHECK_STR(v->source, "environment");
  mg_creds_value_unref(v);
  stop(&e);

  unsetenv("AWS_SESSION_TOKEN");
  REQUIRE(start(&e, &conf, "env-test", NULL));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 2000), MG_ECREDS);
  mg_creds_describe(e.c, &info);
  CHECK_STR(info.last_error, "AWS_SESSION_TOKEN is not set for a temporary access key id (ASIA...)");
  CHECK(!info.available);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

MG_TEST(configuration_errors) {
  tl_clean_env();
  setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.1.2.3/creds", 1);
  static mg_conf_creds_t src = {.kind = MG_CREDS_STATIC, .access_key_id = "AKIA1", .secret_access_key = "x"};
  static const struct {
    mg_conf_creds_t conf;
    const char *msg;
  } cases[] = {
      {{.kind = MG_CREDS_STATIC, .access_key_id = "AKIA1"},
       "static credentials need access_key_id and secret_access_key"},
      {{.kind = MG_CREDS_STATIC, .access_key_id = "AKIA 1", .secret_access_key = "secretvalueSECRETX"},
       "static configuration: access key id is empty, too long or has characters other than A-Z a-z 0-9 - _ ."},
      {{.kind = MG_CREDS_STATIC, .access_key_id = "AKIA1", .secret_access_key = "secret valueSECRETX"},
       "static configuration: secret access key is empty, longer than 256 bytes or not printable ASCII"},
      {{.kind = MG_CREDS_ENV}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set"},
      {{.kind = MG_CREDS_ASSUME_ROLE}, "assume_role needs role_arn"},
      {{.kind = MG_CREDS_ASSUME_ROLE,
        .role_arn = "arn:aws:iam::1:role/r",
        .sts_endpoint = "http://sts.example.com",
        .source = &src},
       "plain http is only allowed to loopback addresses"},
      {{.kind = MG_CREDS_ASSUME_ROLE, .role_arn = "arn:aws:iam::1:role/r", .role_session_name = "a b"},
       "role_session_name must be 2-64 of"},
      {{.kind = MG_CREDS_ASSUME_ROLE,
        .role_arn = "arn:aws:iam::1:role/r",
        .sts_region = "Not A Region",
        .source = &src},
       "STS region \\\"Not A Region\\\" is not a region name"},
      {{.kind = MG_CREDS_ECS}, "plain http is only allowed to loopback addresses and the ECS/EKS agents"},
      {{.kind = MG_CREDS_WEB_IDENTITY}, "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN must be set"},
      {{.kind = MG_CREDS_WEB_IDENTITY, .web_identity_token_file = "/x"},
       "the token file (AWS_WEB_IDENTITY_TOKEN_FILE) is set but the role (AWS_ROLE_ARN) is not"},
      {{.kind = MG_CREDS_PROCESS}, "credential_process needs a command"},
      {{.kind = MG_CREDS_IMDS}, "AWS_EC2_METADATA_DISABLED is true"},
      {{.kind = (mg_creds_kind_t)99}, "unknown credentials kind 99"},
  };
  tl_secret("secretvalueSECRETX");
  tl_secret("secret valueSECRETX");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    int err = 0;
    long before = ftell(tl_log);
    mg_creds_t *c = mg_creds_new(&loop, NULL, &cases[i].conf, NULL, "conf-test", NULL, &err);
    CHECK(c == NULL);
    CHECK_INT(err, MG_ECONFIG);
    char *log = tl_log_text();
    const char *line = log + before;
    if (!strstr(line, "event=credentials_config_invalid") || !strstr(line, cases[i].msg))
      MG_FAIL_("case %zu: log lacks \"%s\": %s", i, cases[i].msg, line);
    free(log);
    CHECK_INT(uv_loop_close(&loop), 0); /* a refused configuration opened nothing */
  }
  int err = 0;
  uv_loop_t loop;
  uv_loop_init(&loop);
  CHECK(mg_creds_new(&loop, NULL, NULL, NULL, "x", NULL, &err) == NULL);
  CHECK_INT(err, MG_EINVAL);
  CHECK_INT(uv_loop_close(&loop), 0);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* A chain member that is set up but wrong stops the chain with its reason
 * (as in the SDKs), instead of silently falling through to another identity. */
MG_TEST(chain_with_a_misconfigured_source) {
  tl_clean_env();
  setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token", 1);
  setenv("AWS_ROLE_ARN", "arn:aws:iam::1:role/r", 1);
  setenv("AWS_ENDPOINT_URL_STS", "http://sts.example.com", 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_CHAIN};
  mg_creds_opts_t o = fast_opts();
  REQUIRE(start(&e, &conf, "misconf-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 2000), MG_ECONFIG);
  mg_creds_info_t info;
  mg_creds_describe(e.c, &info);
  CHECK_STR(info.last_error, "web_identity: STS endpoint http://sts.example.com: plain http is only allowed to "
                             "loopback addresses");
  stop(&e);
  unsetenv("AWS_ENDPOINT_URL_STS");
  setenv("AWS_ROLE_ARN", "", 1); /* empty is unset */
  REQUIRE(start(&e, &conf, "misconf-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 2000), MG_ECONFIG);
  mg_creds_describe(e.c, &info);
  CHECK_STR(info.last_error, "web_identity: the token file (AWS_WEB_IDENTITY_TOKEN_FILE) is set but the role "
                             "(AWS_ROLE_ARN) is not");
  stop(&e);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ the chain with nothing, then a file */

typedef struct appear {
  const char *path;
  const char *text;
  tl_waited_t w;
  uint64_t written_at, told_at;
} appear_t;

static void on_appear_write(uv_timer_t *t) {
  appear_t *a = t->data;
  tl_write_in_place(a->path, a->text, strlen(a->text));
  a->written_at = tl_now_ms();
}

static void on_appear_told(void *ud, int err) {
  appear_t *a = ud;
  a->w.calls++;
  a->w.err = err;
  a->told_at = tl_now_ms();
}

static bool appear_done(void *ud) { return ((appear_t *)ud)->w.calls > 0; }

MG_TEST(chain_without_credentials_then_a_file_appears) {
  tl_clean_env();
  char dir[300], cred[300];
  tl_path(dir, sizeof dir, ".aws");
  tl_path(cred, sizeof cred, ".aws/credentials");
  tl_mkdir(dir);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_CHAIN};
  mg_creds_opts_t o = {.retry_min_ms = 20000, .retry_max_ms = 60000}; /* only the file event can help */
  REQUIRE(start(&e, &conf, "chain-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  mg_creds_info_t info;
  mg_creds_describe(e.c, &info);
  char want[1024];
  snprintf(want, sizeof want,
           "no credentials in any source of the default chain (env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
           "are not set; web_identity: AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are not set; profile: neither "
           "%s/.aws/credentials nor %s/.aws/config exists; ecs: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and "
           "_FULL_URI are not set; imds: AWS_EC2_METADATA_DISABLED is true)",
           tl_home, tl_home);
  CHECK_STR(info.last_error, want);
  CHECK(!info.available);
  CHECK(mg_creds_current(e.c) == NULL);
  CHECK_INT(tl_log_count("level=error mod=creds event=credentials_unavailable creds=chain-test"), 1);
  mg_buf_t m;
  mg_buf_init(&m, 0);
  mg_metrics_render(&m);
  CHECK(strstr(m.data, "moongate_aws_credentials_refresh_total{credentials=\"chain-test\",source=\"chain\","
                       "result=\"failure\"} 1\n") != NULL);
  mg_buf_cleanup(&m);

  /* Credentials appear: the waiter hears of them through the file event. */
  appear_t a = {.path = cred,
                .text = "[default]\naws_access_key_id = AKIAAPPEARED00001\n"
                        "aws_secret_access_key = appearedsecret000000000001\n"};
  tl_secret("appearedsecret000000000001");
  mg_creds_waiter_t w = {0};
  CHECK_INT(mg_creds_wait(e.c, &w, on_appear_told, &a), 0);
  CHECK_INT(mg_creds_wait(e.c, &w, on_appear_told, &a), MG_EINVAL); /* already waiting */
  uv_timer_t t;
  uv_timer_init(&e.loop, &t);
  t.data = &a;
  uv_timer_start(&t, on_appear_write, 200, 0);
  /* The waiter may first hear of the running retry; wait for success. */
  for (int i = 0; i < 3 && (a.w.calls == 0 || a.w.err != 0); i++) {
    if (a.w.calls) {
      a.w.calls = 0;
      mg_creds_wait(e.c, &w, on_appear_told, &a);
    }
    tl_run_until(&e.loop, appear_done, &a, 3000, 2);
  }
  uv_close((uv_handle_t *)&t, NULL);
  CHECK_INT(a.w.err, 0);
  CHECK(a.written_at && a.told_at >= a.written_at && a.told_at - a.written_at < 1000);
  mg_creds_value_t *v = mg_creds_current(e.c);
  REQUIRE(v);
  char src[400];
  snprintf(src, sizeof src, "shared-credentials-file %s [default]", cred);
  CHECK_STR(v->source, src);
  CHECK_STR(v->kind, "profile");
  mg_creds_value_unref(v);
  CHECK_INT(tl_log_count("event=credentials_recovered creds=chain-test"), 1);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ shared files */

typedef struct pcase {
  const char *cred, *config, *profile;
  int err;             /* 0: success */
  const char *expect;  /* access key id on success, else a substring of the error ("%s" = home) */
  const char *source;  /* on success: source, "%s" = home */
} pcase_t;

MG_TEST(profile_files_formats_and_errors) {
  static const pcase_t cases[] = {
      /* the credentials file beats the config file for the same profile */
      {"[dev]\naws_access_key_id = AKIACREDDEV\naws_secret_access_key = credsecret0000000000000001\n",
       "[profile dev]\naws_access_key_id=AKIACONFIGDEV\naws_secret_access_key=confsecret0000000000001\n", "dev", 0,
       "AKIACREDDEV", "shared-credentials-file %s/.aws/credentials [dev]"},
      /* [profile default] beats [default] in the config file */
      {NULL,
       "[default]\naws_access_key_id=AKIAPLAINDEFAULT\naws_secret_access_key=plainsecret000000000001\n"
       "[profile default]\naws_access_key_id=AKIAPROFILEDEFAULT\naws_secret_access_key=profsecret000000000001\n",
       NULL, 0, "AKIAPROFILEDEFAULT", "config-file %s/.aws/config [profile default]"},
      /* a config section without "profile " is not a profile */
      {NULL, "[dev]\naws_access_key_id=AKIAX\naws_secret_access_key=ignoredsecret00000001\n", "dev", MG_ENOTFOUND,
       "profile \"dev\" is in neither %s/.aws/credentials nor %s/.aws/config", NULL},
      {"[default]\naws_access_key_id = AKIAMALFORMED\naws_secret_access_key SECRETVALUE0000123\n", NULL, NULL,
       MG_EPARSE, "shared credentials file %s/.aws/credentials line 3: expected 'name = value'", NULL},
      {"[default]\naws_access_key_id = AKIAHALF\n", NULL, NULL, MG_ECREDS,
       "profile \"default\" (%s/.aws/credentials line 2): aws_secret_access_key is missing", NULL},
      {"[default]\naws_access_key_id = ASIANOTOKEN\naws_secret_access_key = notokensecret0000000001\n", NULL, NULL,
       MG_ECREDS, "aws_session_token is missing for a temporary access key id (ASIA...)", NULL},
      {NULL, "[profile r]\nrole_arn = arn:aws:iam::1:role/x\n", "r", MG_ECREDS,
       "profile \"r\" (%s/.aws/config line 2): role_arn needs source_profile, credential_source or "
       "web_identity_token_file",
       NULL},
      {NULL,
       "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n[profile b]\nrole_arn = "
       "arn:aws:iam::1:role/b\nsource_profile = a\n",
       "a", MG_ECREDS, "source_profile \"a\" leads back to itself", NULL},
      {NULL, "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = nothere\n", "a", MG_ECREDS,
       "profile \"a\" (%s/.aws/config line 3): source_profile: profile \"nothere\" is in neither", NULL},
      {NULL, "[profile a]\nrole_arn = arn:aws:iam::1:role/a\ncredential_source = Somewhere\n", "a", MG_ECREDS,
       "credential_source must be Environment, Ec2InstanceMetadata or EcsContainer", NULL},
      {NULL, "[profile a]\nrole_arn = arn:aws:iam::1:role/a\ncredential_source = Environment\nsource_profile = b\n",
       "a", MG_ECREDS, "source_profile and credential_source are both set", NULL},
      {NULL, "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = a\nduration_seconds = 90000\n", "a",
       MG_ECREDS, "duration_seconds must be a number of seconds up to 43200", NULL},
      {NULL, "[profile s]\nsso_session = corp\nsso_account_id = 1\n", "s", MG_ECREDS,
       "uses IAM Identity Center (SSO), which moongate does not support", NULL},
      {NULL, "[profile e]\nregion = eu-west-1\n", "e", MG_ENOTFOUND, "profile \"e\" has no credentials", NULL},
      {NULL, "[profile bad\n", "x", MG_EPARSE, "config file %s/.aws/config line 1: section header must end with ']'",
       NULL},
  };
  tl_secret("SECRETVALUE0000123");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tl_clean_env();
    char dir[300], path[300];
    tl_path(dir, sizeof dir, ".aws");
    tl_mkdir(dir);
    if (cases[i].cred) {
      tl_path(path, sizeof path, ".aws/credentials");
      tl_write_in_place(path, cases[i].cred, strlen(cases[i].cred));
    }
    if (cases[i].config) {
      tl_path(path, sizeof path, ".aws/config");
      tl_write_in_place(path, cases[i].config, strlen(cases[i].config));
    }
    if (cases[i].profile && i == 1) setenv("AWS_PROFILE", cases[i].profile, 1);
    env_t e;
    mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE, .profile = (char *)cases[i].profile};
    mg_creds_opts_t o = fast_opts();
    REQUIRE(start(&e, &conf, "profile-test", &o));
    int rc = tl_wait_refresh(&e.loop, e.c, 3000);
    mg_creds_info_t info;
    mg_creds_describe(e.c, &info);
    char want[600];
    snprintf(want, sizeof want, cases[i].err ? cases[i].expect : (cases[i].source ? cases[i].source : ""), tl_home,
             tl_home);
    if (cases[i].err == 0) {
      mg_creds_value_t *v = mg_creds_current(e.c);
      if (rc != 0 || !v) MG_FAIL_("case %zu: rc %d, error %s", i, rc, info.last_error);
      if (v) {
        CHECK_STR(v->access_key_id, cases[i].expect);
        CHECK_STR(v->source, want);
        tl_secret_value(v);
      }
      mg_creds_value_unref(v);
    } else {
      int want_err = cases[i].err == MG_ENOTFOUND ? MG_ECREDS : cases[i].err;
      if (rc != want_err)
        MG_FAIL_("case %zu: rc %s want %s (%s)", i, mg_err_name(rc), mg_err_name(want_err), info.last_error);
      if (!strstr(info.last_error, want)) MG_FAIL_("case %zu: \"%s\" lacks \"%s\"", i, info.last_error, want);
      tl_check_no_secrets(info.last_error);
    }
    stop(&e);
    tl_rm_rf(tl_home);
  }
  tl_check_no_secrets(NULL);
}

/* SSM-style rotation: the file is rewritten in place, then replaced by
 * rename; each new key is picked up well within a second. */
typedef struct rot {
  mg_creds_t *c;
  const char *want;
  uint64_t seen_at;
  bool gap;
} rot_t;

static bool rot_seen(void *ud) {
  rot_t *r = ud;
  mg_creds_value_t *v = mg_creds_current(r->c);
  if (!v) {
    r->gap = true;
    return false;
  }
  bool same = strcmp(v->access_key_id, r->want) == 0;
  tl_secret_value(v);
  mg_creds_value_unref(v);
  if (same) r->seen_at = tl_now_ms();
  return same;
}

static void creds_text(char *out, size_t n, const char *akid, int i) {
  snprintf(out, n,
           "[default]\naws_access_key_id = %s\naws_secret_access_key = rotsecret%024d\n"
           "aws_session_token = rottoken%048d\n",
           akid, i, i);
  char s[64], t[80];
  snprintf(s, sizeof s, "rotsecret%024d", i);
  snprintf(t, sizeof t, "rottoken%048d", i);
  tl_secret(s);
  tl_secret(t);
}

MG_TEST(profile_rotation_in_place_and_by_rename) {
  tl_clean_env();
  char dir[300], cred[300], text[400];
  tl_path(dir, sizeof dir, ".aws");
  tl_path(cred, sizeof cred, ".aws/credentials");
  tl_mkdir(dir);
  creds_text(text, sizeof text, "ASIAROTATION00001", 1);
  tl_write_in_place(cred, text, strlen(text));
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE};
  mg_creds_opts_t o = {.retry_min_ms = 30000, .retry_max_ms = 60000}; /* no help from retries */
  REQUIRE(start(&e, &conf, "rotation-test", &o));
  mg_creds_value_t *first = tl_get(&e.loop, e.c, 2000);
  REQUIRE(first);
  CHECK_STR(first->access_key_id, "ASIAROTATION00001");
  for (int i = 2; i <= 7; i++) {
    char akid[32];
    snprintf(akid, sizeof akid, "ASIAROTATION%05d", i);
    creds_text(text, sizeof text, akid, i);
    uint64_t t0 = tl_now_ms();
    if (i % 2) tl_write_rename(cred, text);
    else tl_write_in_place(cred, text, strlen(text));
    rot_t r = {e.c, akid, 0, false};
    CHECK(tl_run_until(&e.loop, rot_seen, &r, 2000, 5));
    if (!r.seen_at || r.seen_at - t0 >= 1000)
      MG_FAIL_("rotation %d (%s) noticed after %llu ms", i, i % 2 ? "rename" : "in place",
               (unsigned long long)(r.seen_at ? r.seen_at - t0 : 9999));
    CHECK(!r.gap);
  }
  /* The first value is still intact for whoever holds it. */
  CHECK_STR(first->access_key_id, "ASIAROTATION00001");
  CHECK_STR(first->secret_access_key, "rotsecret000000000000000000000001");
  mg_creds_value_unref(first);
  CHECK_INT(tl_log_count("event=credentials_rotated creds=rotation-test"), 6);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* A writer that truncates and writes in pieces: a prefix cut inside a
 * line (no final newline) and a prefix cut after the secret (a temporary
 * key without its token) are never handed out. */
typedef struct half {
  mg_creds_t *c;
  const char *path;
  const char *steps[3];
  int step;
  uint64_t t0, done_at, new_seen_at;
  int bad, gaps, polls;
  const char *old_akid, *old_secret, *new_akid, *new_secret;
} half_t;

static bool half_poll(void *ud) {
  half_t *h = ud;
  uint64_t now = tl_now_ms();
  int want = (int)((now - h->t0) / 300);
  while (h->step < 3 && h->step <= want) {
    tl_write_in_place(h->path, h->steps[h->step], strlen(h->steps[h->step]));
    if (++h->step == 3) h->done_at = tl_now_ms();
  }
  mg_creds_value_t *v = mg_creds_current(h->c);
  h->polls++;
  if (!v) {
    h->gaps++;
    return false;
  }
  bool is_old = strcmp(v->access_key_id, h->old_akid) == 0 && strcmp(v->secret_access_key, h->old_secret) == 0;
  bool is_new = strcmp(v->access_key_id, h->new_akid) == 0 && strcmp(v->secret_access_key, h->new_secret) == 0;
  if (!is_old && !is_new) h->bad++;
  if (is_new && !h->new_seen_at) h->new_seen_at = tl_now_ms();
  mg_creds_value_unref(v);
  return h->new_seen_at != 0;
}

MG_TEST(profile_half_written_file_is_never_used) {
  tl_clean_env();
  char dir[300], cred[300];
  tl_path(dir, sizeof dir, ".aws");
  tl_path(cred, sizeof cred, ".aws/credentials");
  tl_mkdir(dir);
  const char *old =
      "[default]\naws_access_key_id = AKIAOLDKEY0000001\naws_secret_access_key = oldsecret00000000000000001\n";
  tl_write_in_place(cred, old, strlen(old));
  tl_secret("oldsecret00000000000000001");
  tl_secret("newsecret00000000000000000000000002");
  tl_secret("newtoken00000000000000000000000000000000000002");
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE};
  mg_creds_opts_t o = fast_opts();
  REQUIRE(start(&e, &conf, "half-test", &o));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 2000);
  REQUIRE(v);
  mg_creds_value_unref(v);
  /* Long-term key cut inside the secret (only the newline rule can tell),
   * then a temporary key cut after its secret line, then the whole file. */
  half_t h = {.c = e.c,
              .path = cred,
              .steps = {"[default]\naws_access_key_id = AKIANEWKEY0000002\naws_secret_access_key = newsecret000000",
                        "[default]\naws_access_key_id = ASIANEWKEY0000002\n"
                        "aws_secret_access_key = newsecret00000000000000000000000002\n",
                        "[default]\naws_access_key_id = ASIANEWKEY0000002\n"
                        "aws_secret_access_key = newsecret00000000000000000000000002\n"
                        "aws_session_token = newtoken00000000000000000000000000000000000002\n"},
              .old_akid = "AKIAOLDKEY0000001",
              .old_secret = "oldsecret00000000000000001",
              .new_akid = "ASIANEWKEY0000002",
              .new_secret = "newsecret00000000000000000000000002"};
  h.t0 = tl_now_ms();
  CHECK(tl_run_until(&e.loop, half_poll, &h, 4000, 3));
  CHECK_INT(h.bad, 0);
  CHECK_INT(h.gaps, 0);
  CHECK(h.polls > 100);
  CHECK(h.done_at && h.new_seen_at >= h.done_at && h.new_seen_at - h.done_at < 1000);
  /* The transient states were retried quietly (debug), not warned about. */
  CHECK_INT(tl_log_count("level=warn mod=creds event=credentials_refresh_failed creds=half-test"), 0);
  CHECK(tl_log_count("level=debug mod=creds event=credentials_refresh_failed creds=half-test") >= 1);

  /* A file that stays broken: the old credentials stay in use (file
   * credentials do not expire) and one warning names file and line. */
  const char *broken = "[default]\naws_access_key_id = ASIABROKEN\naws_secret_access_key\n";
  tl_write_in_place(cred, broken, strlen(broken));
  tl_run_for(&e.loop, 2600);
  v = mg_creds_current(e.c);
  CHECK(v && strcmp(v->access_key_id, "ASIANEWKEY0000002") == 0);
  mg_creds_value_unref(v);
  char want[400];
  snprintf(want, sizeof want, "shared credentials file %s line 3: expected 'name = value'", cred);
  char *log = tl_log_text();
  const char *warn = strstr(log, "level=warn mod=creds event=credentials_refresh_failed creds=half-test");
  CHECK(warn && strstr(warn, want));
  free(log);
  CHECK_INT(tl_log_count("level=warn mod=creds event=credentials_refresh_failed creds=half-test"), 1);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* No file events at all (the directory did not exist at start): the
 * once-a-second stat() in mg_creds_current finds the new file. */
typedef struct sf {
  mg_creds_t *c;
  const char *dir, *path;
  uint64_t written_at, seen_at;
} sf_t;

static bool sf_poll(void *ud) {
  sf_t *s = ud;
  if (!s->written_at) {
    tl_mkdir(s->dir);
    const char *t = "[default]\naws_access_key_id = AKIASTATFALLBACK\naws_secret_access_key = statsecret00000000001\n";
    tl_write_in_place(s->path, t, strlen(t));
    s->written_at = tl_now_ms();
  }
  mg_creds_value_t *v = mg_creds_current(s->c);
  if (v) {
    s->seen_at = tl_now_ms();
    mg_creds_value_unref(v);
  }
  return v != NULL;
}

MG_TEST(profile_stat_fallback) {
  tl_clean_env();
  char dir[300], cred[300], conf_path[300];
  tl_path(dir, sizeof dir, "later");
  tl_path(cred, sizeof cred, "later/credentials");
  tl_path(conf_path, sizeof conf_path, "later/config");
  tl_secret("statsecret00000000001");
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE, .credentials_file = cred, .config_file = conf_path};
  mg_creds_opts_t o = {.retry_min_ms = 60000, .retry_max_ms = 60000};
  REQUIRE(start(&e, &conf, "stat-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 2000), MG_ECREDS);
  sf_t s = {e.c, dir, cred, 0, 0};
  CHECK(tl_run_until(&e.loop, sf_poll, &s, 3000, 20));
  CHECK(s.seen_at && s.seen_at - s.written_at <= 1500);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ credential_process */

static int count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  int n = 0, ch;
  if (!f) return 0;
  while ((ch = fgetc(f)) != EOF) n += ch == '\n';
  fclose(f);
  return n;
}

static void write_script(const char *name, const char *body, char *cmd, size_t n) {
  char path[300];
  tl_path(path, sizeof path, name);
  tl_write_in_place(path, body, strlen(body));
  snprintf(cmd, n, "sh '%s'", path);
}

/* Prints credentials valid for $LIFE seconds (none: no Expiration); one
 * line per run in $HOME/runs. */
static const char proc_script[] =
    "echo run >> \"$HOME/runs\"\n"
    "n=$(wc -l < \"$HOME/runs\")\n"
    "if [ -n \"$LIFE\" ]; then exp=\", \\\"Expiration\\\": \\\"$(date -u -d \"@$(( $(date +%s) + LIFE ))\" "
    "+%Y-%m-%dT%H:%M:%SZ)\\\"\"; else exp=; fi\n"
    "printf '{\"Version\": 1, \"AccessKeyId\": \"ASIAPROC%08d\", \"SecretAccessKey\": \"procsecret%030d\", "
    "\"SessionToken\": \"proctoken%040d\"%s}\\n' $n $n $n \"$exp\"\n";

static void remember_proc_secrets(int upto) {
  for (int i = 1; i <= upto; i++) {
    char s[64], t[64];
    snprintf(s, sizeof s, "procsecret%030d", i);
    snprintf(t, sizeof t, "proctoken%040d", i);
    tl_secret(s);
    tl_secret(t);
  }
}

typedef struct pw {
  mg_creds_t *c;
  int gaps, polls;
  char last[32];
  int changes;
} pw_t;

static bool pw_poll(void *ud) {
  pw_t *p = ud;
  mg_creds_value_t *v = mg_creds_current(p->c);
  p->polls++;
  if (!v) {
    p->gaps++;
    return false;
  }
  if (strcmp(v->access_key_id, p->last) != 0) {
    p->changes++;
    snprintf(p->last, sizeof p->last, "%s", v->access_key_id);
  }
  mg_creds_value_unref(v);
  return false;
}

/* Polls until every credential_process run started so far has delivered. */
typedef struct pw_settle {
  pw_t *p;
  const char *runs;
} pw_settle_t;

static bool pw_settled(void *ud) {
  pw_settle_t *st = ud;
  pw_poll(st->p);
  return st->p->changes == count_lines(st->runs);
}

MG_TEST(process_cached_until_near_expiry) {
  tl_clean_env();
  remember_proc_secrets(40);
  char cmd[400], runs[300];
  write_script("proc.sh", proc_script, cmd, sizeof cmd);
  tl_path(runs, sizeof runs, "runs");
  setenv("LIFE", "6", 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROCESS, .process = cmd};
  REQUIRE(start(&e, &conf, "process-test", NULL));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 3000);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIAPROC00000001");
  CHECK_STR(v->source, "credential_process");
  CHECK(v->expires_ms > 0);
  mg_creds_value_unref(v);
  /* 7 s of constant use (a poll per millisecond): the process runs when the
   * credentials approach expiry (half of 6 s, minus jitter), not per use. */
  pw_t p = {e.c, 0, 0, "", 0};
  tl_run_until(&e.loop, pw_poll, &p, 7000, 1);
  int n = count_lines(runs);
  if (n < 2 || n > 4) MG_FAIL_("credential_process ran %d times in 7 s (want 2-4)", n);
  /* A run the window cut off (it logs itself when it starts) delivers its
   * credentials a moment later; a loaded machine must not fail the count. */
  pw_settle_t st = {&p, runs};
  tl_run_until(&e.loop, pw_settled, &st, 3000, 5);
  n = count_lines(runs);
  CHECK_INT(p.gaps, 0);
  CHECK(p.polls > 1000);
  CHECK_INT(p.changes, n);
  stop(&e);
  unsetenv("LIFE");

  /* Without Expiration: cached for good. */
  unlink(runs);
  REQUIRE(start(&e, &conf, "process-test", NULL));
  v = tl_get(&e.loop, e.c, 3000);
  REQUIRE(v);
  CHECK_INT(v->expires_ms, 0);
  mg_creds_value_unref(v);
  p = (pw_t){e.c, 0, 0, "", 0};
  tl_run_until(&e.loop, pw_poll, &p, 1000, 1);
  CHECK_INT(count_lines(runs), 1);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

static bool file_exists(const char *p) { return access(p, F_OK) == 0; }

static bool pid_gone(pid_t pid) {
  char path[64], st[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return true;
  size_t n = fread(st, 1, sizeof st - 1, f);
  fclose(f);
  st[n] = '\0';
  const char *close = strrchr(st, ')');
  return close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'); /* a zombie waiting for init */
}

static bool pid_gone_cb(void *ud) { return pid_gone(*(pid_t *)ud); }

MG_TEST(process_failures_and_timeout) {
  tl_clean_env();
  static const struct {
    const char *script;
    int err;
    const char *msg;
  } cases[] = {
      {"echo 'boom: no credentials for you' >&2; echo '{\"SecretAccessKey\": \"SECRETSECRET\"}'; exit 3\n", MG_ECREDS,
       "credential_process exited with status 3: boom: no credentials for you"},
      {"echo '{\"Version\": 1, \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRETSECRET\"'\n", MG_EPARSE,
       "credential_process output: not a JSON object (byte 73: unterminated object)"},
      {"echo '{\"Version\": 2, \"AccessKeyId\": \"AKIA1\", \"SecretAccessKey\": \"SECRETSECRET\"}'\n", MG_ECREDS,
       "credential_process output: \"Version\": 1 is missing or another version"},
      {"!kill -9 $$", MG_ECREDS, "credential_process was killed by signal 9"}, /* '!': the command itself */
      {"head -c 70000 /dev/zero | tr '\\0' x\n", MG_ETOOBIG, "credential_process wrote more than 65536 bytes"},
  };
  tl_secret("SECRETSECRET");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char cmd[400];
    if (cases[i].script[0] == '!') snprintf(cmd, sizeof cmd, "%s", cases[i].script + 1);
    else write_script("fail.sh", cases[i].script, cmd, sizeof cmd);
    env_t e;
    mg_conf_creds_t conf = {.kind = MG_CREDS_PROCESS, .process = cmd};
    mg_creds_opts_t o = {.retry_min_ms = 30000, .retry_max_ms = 30000};
    REQUIRE(start(&e, &conf, "process-fail", &o));
    int rc = tl_wait_refresh(&e.loop, e.c, 5000);
    mg_creds_info_t info;
    mg_creds_describe(e.c, &info);
    if (rc != cases[i].err) MG_FAIL_("case %zu: %s (%s)", i, mg_err_name(rc), info.last_error);
    if (!strstr(info.last_error, cases[i].msg))
      MG_FAIL_("case %zu: \"%s\" lacks \"%s\"", i, info.last_error, cases[i].msg);
    tl_check_no_secrets(info.last_error);
    stop(&e);
  }
  /* Timeout: the shell and the child it left behind are killed. */
  char cmd[400], pidfile[300];
  tl_path(pidfile, sizeof pidfile, "child.pid");
  write_script("hang.sh", "sleep 30 & echo $! > \"$HOME/child.pid\"; wait\n", cmd, sizeof cmd);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROCESS, .process = cmd};
  mg_creds_opts_t o = {.process_timeout_ms = 400, .retry_min_ms = 30000, .retry_max_ms = 30000};
  REQUIRE(start(&e, &conf, "process-hang", &o));
  uint64_t t0 = tl_now_ms();
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 5000), MG_ETIMEDOUT);
  CHECK(tl_now_ms() - t0 < 2000);
  mg_creds_info_t info;
  mg_creds_describe(e.c, &info);
  CHECK_STR(info.last_error, "credential_process did not finish within 400 ms and was killed");
  REQUIRE(file_exists(pidfile));
  FILE *f = fopen(pidfile, "r");
  int child = 0;
  CHECK(f && fscanf(f, "%d", &child) == 1);
  if (f) fclose(f);
  pid_t cp = child;
  CHECK(child > 0 && tl_run_until(&e.loop, pid_gone_cb, &cp, 2000, 10));
  stop(&e);

  /* Freed while the process runs: it is killed and the loop drains. */
  unlink(pidfile);
  o.process_timeout_ms = 30000;
  REQUIRE(start(&e, &conf, "process-free", &o));
  CHECK(!tl_run_until(&e.loop, (tl_cond_fn)file_exists, pidfile, 300, 5) || file_exists(pidfile));
  t0 = tl_now_ms();
  stop(&e);
  CHECK(tl_now_ms() - t0 < 2000);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ invalidate and waiters */

MG_TEST(invalidate_forces_one_refresh) {
  tl_clean_env();
  remember_proc_secrets(10);
  char cmd[400], runs[300];
  write_script("proc.sh", proc_script, cmd, sizeof cmd);
  tl_path(runs, sizeof runs, "runs");
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROCESS, .process = cmd};
  mg_creds_opts_t o = {.invalidate_interval_ms = 10000};
  REQUIRE(start(&e, &conf, "invalidate-test", &o));
  mg_creds_value_t *v1 = tl_get(&e.loop, e.c, 3000);
  REQUIRE(v1);
  CHECK_INT(count_lines(runs), 1);
  /* Five writers are refused with the same credentials at once. */
  for (int i = 0; i < 5; i++) mg_creds_invalidate(e.c, v1);
  CHECK(mg_creds_current(e.c) == NULL); /* held back until the forced refresh ends */
  mg_creds_value_t *v2 = tl_get(&e.loop, e.c, 3000);
  REQUIRE(v2);
  CHECK_STR(v2->access_key_id, "ASIAPROC00000002");
  CHECK_INT(count_lines(runs), 2);
  /* The old value is no longer current: nothing happens. */
  mg_creds_invalidate(e.c, v1);
  /* The new one is refused too, within the interval: rate-limited. */
  mg_creds_invalidate(e.c, v2);
  tl_run_for(&e.loop, 300);
  CHECK_INT(count_lines(runs), 2);
  mg_creds_value_t *v3 = mg_creds_current(e.c);
  CHECK(v3 == v2);
  mg_creds_value_unref(v3);
  CHECK_INT(tl_log_count("event=credentials_rejected creds=invalidate-test access_key_id=ASIA**** action=refresh"), 1);
  mg_creds_invalidate(NULL, v2);
  mg_creds_invalidate(e.c, NULL);
  mg_creds_value_unref(v1);
  mg_creds_value_unref(v2);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

typedef struct freer {
  mg_creds_t **c;
  int calls;
} freer_t;

static void on_free_in_cb(void *ud, int err) {
  freer_t *f = ud;
  (void)err;
  f->calls++;
  mg_creds_free(*f->c);
  *f->c = NULL;
}

static bool freer_called(void *ud) { return ((freer_t *)ud)->calls > 0; }

MG_TEST(waiters_contract) {
  tl_clean_env();
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_STATIC, .access_key_id = "AKIAWAIT",
                          .secret_access_key = "waitsecret000000000001"};
  tl_secret(conf.secret_access_key);
  REQUIRE(start(&e, &conf, "wait-test", NULL));
  /* Cancelled waiters are not called; others are, once, never inline. */
  mg_creds_waiter_t w1 = {0}, w2 = {0};
  tl_waited_t r1 = {0, 0}, r2 = {0, 0};
  CHECK_INT(mg_creds_wait(e.c, &w1, tl_on_wait, &r1), 0);
  CHECK_INT(mg_creds_wait(e.c, &w2, tl_on_wait, &r2), 0);
  CHECK_INT(r1.calls + r2.calls, 0);
  mg_creds_cancel_wait(&w1);
  mg_creds_cancel_wait(&w1); /* twice is fine */
  CHECK(tl_run_until(&e.loop, tl_waited_once, &r2, 2000, 2));
  CHECK_INT(r1.calls, 0);
  CHECK_INT(r2.calls, 1);
  CHECK_INT(r2.err, 0);
  /* With credentials available a wait still ends soon (a cached refresh). */
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 500), 0);
  CHECK_INT(mg_creds_wait(NULL, &w1, tl_on_wait, &r1), MG_EINVAL);
  CHECK_INT(mg_creds_wait(e.c, &w1, NULL, &r1), MG_EINVAL);
  /* A callback may free the object; the other waiter is detached. */
  freer_t f = {&e.c, 0};
  CHECK_INT(mg_creds_wait(e.c, &w1, on_free_in_cb, &f), 0);
  CHECK_INT(mg_creds_wait(e.c, &w2, on_free_in_cb, &f), 0);
  CHECK(tl_run_until(&e.loop, freer_called, &f, 2000, 2));
  CHECK_INT(f.calls, 1);
  CHECK(e.c == NULL);
  mg_creds_cancel_wait(&w2); /* detached: a no-op */
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

MG_TEST_MAIN()
