/* Tests for mg_creds against the loopback AWS fakes (awsfakes.py serve, a
 * child process): IMDSv2 (token reuse, no role, off EC2 in about a
 * second), the ECS/EKS endpoint with an authorization token file re-read
 * each time, web identity, STS AssumeRole into a second account with an
 * external id, chained roles, roles from ~/.aws/config (source_profile with
 * rotating keys, credential_source), the default chain's order, invalidate
 * sharing one STS call, and STS refusing the source's keys or failing.
 * The fakes verify SigV4 with botocore, so a success here is a request
 * AWS would accept. Logs are checked for every secret seen. */
#include "creds_testlib.h"

__attribute__((constructor)) static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  tl_capture_logs();
}

typedef struct env {
  uv_loop_t loop;
  mg_http_client_t *http;
  mg_creds_t *c;
  int err;
} env_t;

static bool start(env_t *e, const mg_conf_creds_t *conf, const char *name, const mg_creds_opts_t *o) {
  uv_loop_init(&e->loop);
  e->http = mg_http_client_new(&e->loop, NULL);
  e->c = mg_creds_new(&e->loop, e->http, conf, tl_fk.region, name, o, &e->err);
  if (!e->c) MG_FAIL_("mg_creds_new: %s", mg_err_name(e->err));
  return e->c != NULL;
}

static void stop(env_t *e) { tl_teardown(&e->loop, e->c, e->http); }

static void role(const char *arn, const char *extra) {
  char body[600];
  snprintf(body, sizeof body, "{\"arn\": \"%s\"%s%s}", arn, extra ? ", " : "", extra ? extra : "");
  tl_ctl_ok("/control/role", body, NULL);
}

static void set(const char *json) { tl_ctl_ok("/control/set", json, NULL); }

static const char *last_error(mg_creds_t *c) {
  static mg_creds_info_t info;
  mg_creds_describe(c, &info);
  return info.last_error;
}

#define REQUIRE_FAKES()                                                      \
  do {                                                                       \
    if (!tl_fakes_start()) {                                                 \
      MG_FAIL_("cannot start tests/integration/awsfakes.py (python3 + botocore)"); \
      return;                                                                \
    }                                                                        \
  } while (0)

/* ------------------------------------------------------------ IMDSv2 */

MG_TEST(imds_v2) {
  REQUIRE_FAKES();
  tl_clean_env();
  unsetenv("AWS_EC2_METADATA_DISABLED");
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", tl_fk.imds, 1);
  role("arn:aws:iam::555555555555:role/ec2-amp", NULL);
  set("{\"imds_role\": \"arn:aws:iam::555555555555:role/ec2-amp\", \"imds_duration\": 21600}");
  long tokens = tl_counter("imds_token"), creds = tl_counter("imds_creds");
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_IMDS};
  mg_creds_opts_t o = {.invalidate_interval_ms = 1};
  REQUIRE(start(&e, &conf, "imds-test", &o));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  char src[300], owner[200];
  snprintf(src, sizeof src, "imds %s role ec2-amp", tl_fk.imds);
  CHECK_STR(v->source, src);
  CHECK_STR(v->kind, "imds");
  CHECK(v->session_token != NULL);
  int64_t left = v->expires_ms / 1000 - (int64_t)time(NULL);
  CHECK(left > 21000 && left <= 21600);
  tl_key_info(v->access_key_id, "role", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:iam::555555555555:role/ec2-amp");
  CHECK_INT(tl_counter("imds_token") - tokens, 1);
  /* A forced refresh reuses the session token; IMDS serves the same
   * credentials, which stay the same object. */
  mg_creds_invalidate(e.c, v);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), 0);
  mg_creds_value_t *v2 = mg_creds_current(e.c);
  CHECK(v2 == v);
  CHECK_INT(tl_counter("imds_token") - tokens, 1);
  CHECK_INT(tl_counter("imds_creds") - creds, 2);
  mg_creds_value_unref(v2);
  /* The session token expired early: one 401, one new token, no error. */
  long unauthorized = tl_counter("imds_unauthorized");
  set("{\"imds_tokens_expire\": true}");
  mg_creds_invalidate(e.c, v);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), 0);
  CHECK_INT(tl_counter("imds_unauthorized") - unauthorized, 1);
  CHECK_INT(tl_counter("imds_token") - tokens, 2);
  mg_creds_value_unref(v);
  stop(&e);

  set("{\"imds_role\": null}");
  REQUIRE(start(&e, &conf, "imds-test", NULL));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  char want[300];
  snprintf(want, sizeof want, "no IAM role is attached to this instance (instance metadata at %s answered 404)",
           tl_fk.imds);
  CHECK_STR(last_error(e.c), want);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* Off EC2: a metadata address that accepts connections and never answers
 * (or refuses them) costs the default chain about a second at most. */
MG_TEST(imds_off_ec2_is_quick) {
  tl_clean_env();
  unsetenv("AWS_EC2_METADATA_DISABLED");
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  REQUIRE(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 8) == 0 &&
          getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url, 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_CHAIN};
  mg_creds_opts_t o = {.retry_min_ms = 30000, .retry_max_ms = 30000};
  uint64_t t0 = tl_now_ms();
  REQUIRE(start(&e, &conf, "offec2-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 5000), MG_ECREDS);
  uint64_t took = tl_now_ms() - t0;
  if (took < 900 || took > 1600) MG_FAIL_("the chain took %llu ms (IMDS timeout is 1 s)", (unsigned long long)took);
  char want[200];
  snprintf(want, sizeof want, "imds: no instance metadata service at %s (ETIMEDOUT", url);
  CHECK(strstr(last_error(e.c), want) != NULL);
  stop(&e);
  close(lfd);
  /* Refused: immediate. */
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url, 1); /* the port is closed now */
  t0 = tl_now_ms();
  REQUIRE(start(&e, &conf, "offec2-test", &o));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 5000), MG_ECREDS);
  CHECK(tl_now_ms() - t0 < 500);
  snprintf(want, sizeof want, "imds: no instance metadata service at %s (ECONNREFUSED", url);
  CHECK(strstr(last_error(e.c), want) != NULL);
  stop(&e);
  tl_rm_rf(tl_home);
}

/* Freed while requests are in flight (IMDS hanging, STS slow): they are
 * cancelled, nothing is called back, and the loop drains at once. */
MG_TEST(free_with_requests_in_flight) {
  REQUIRE_FAKES();
  tl_clean_env();
  unsetenv("AWS_EC2_METADATA_DISABLED");
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  REQUIRE(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 8) == 0 &&
          getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url, 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_IMDS};
  mg_creds_opts_t o = {.imds_timeout_ms = 10000};
  REQUIRE(start(&e, &conf, "inflight-test", &o));
  mg_creds_waiter_t w = {0};
  tl_waited_t r = {0, 0};
  CHECK_INT(mg_creds_wait(e.c, &w, tl_on_wait, &r), 0);
  tl_run_for(&e.loop, 200);
  uint64_t t0 = tl_now_ms();
  stop(&e);
  CHECK(tl_now_ms() - t0 < 1000);
  CHECK_INT(r.calls, 0); /* detached by free */
  close(lfd);

  char akid[64], secret[128];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  role("arn:aws:iam::222222222222:role/slow", "\"trusted\": [\"111111111111\"]");
  set("{\"delay\": {\"sts\": 2}}");
  mg_conf_creds_t src = {.kind = MG_CREDS_STATIC, .access_key_id = akid, .secret_access_key = secret};
  mg_conf_creds_t ar = {.kind = MG_CREDS_ASSUME_ROLE, .role_arn = "arn:aws:iam::222222222222:role/slow",
                        .sts_endpoint = tl_fk.sts, .source = &src};
  REQUIRE(start(&e, &ar, "inflight-test", NULL));
  tl_run_for(&e.loop, 300);
  t0 = tl_now_ms();
  stop(&e);
  CHECK(tl_now_ms() - t0 < 1000);
  set("{\"delay\": {\"sts\": 0}}");
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ ECS / EKS Pod Identity */

MG_TEST(ecs_full_uri_with_token_file) {
  REQUIRE_FAKES();
  tl_clean_env();
  role("arn:aws:iam::666666666666:role/task", NULL);
  set("{\"ecs_role\": \"arn:aws:iam::666666666666:role/task\", \"ecs_auth\": \"token-one-0000000000\"}");
  char uri[300], tok[300];
  snprintf(uri, sizeof uri, "%s%s", tl_fk.ecs, tl_fk.ecs_path);
  tl_path(tok, sizeof tok, "eks-pod-identity-token");
  tl_write_in_place(tok, "token-one-0000000000\n", 21);
  tl_secret("token-one-0000000000");
  tl_secret("token-two-0000000000");
  setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri, 1);
  setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tok, 1);
  setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ignored-when-a-file-is-set", 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_ECS};
  mg_creds_opts_t o = {.invalidate_interval_ms = 1, .retry_min_ms = 30000, .retry_max_ms = 30000};
  REQUIRE(start(&e, &conf, "ecs-test", &o));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  char src[400], owner[200];
  snprintf(src, sizeof src, "ecs %s", uri);
  CHECK_STR(v->source, src);
  CHECK_STR(v->kind, "ecs");
  tl_key_info(v->access_key_id, "role", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:iam::666666666666:role/task");
  /* The token file is read again on every fetch. */
  set("{\"ecs_auth\": \"token-two-0000000000\"}");
  tl_write_in_place(tok, "token-two-0000000000", 20);
  tl_run_for(&e.loop, 5);
  mg_creds_invalidate(e.c, v);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), 0);
  mg_creds_value_t *v2 = mg_creds_current(e.c);
  REQUIRE(v2);
  CHECK(strcmp(v2->access_key_id, v->access_key_id) != 0);
  tl_secret_value(v2);
  /* A token the endpoint refuses. */
  tl_write_in_place(tok, "token-bad", 9);
  tl_run_for(&e.loop, 5);
  mg_creds_invalidate(e.c, v2);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  char want[400];
  snprintf(want, sizeof want, "container credentials endpoint %s answered HTTP 401 (check the authorization token)",
           uri);
  CHECK_STR(last_error(e.c), want);
  mg_creds_value_unref(v);
  mg_creds_value_unref(v2);
  stop(&e);
  /* The token from the environment when there is no file. */
  unsetenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
  setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "token-two-0000000000", 1);
  REQUIRE(start(&e, &conf, "ecs-test", &o));
  v = tl_get(&e.loop, e.c, 5000);
  CHECK(v != NULL);
  mg_creds_value_unref(v);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ web identity */

static void web_token(char *out, size_t n) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  tl_ctl_ok("/control/web_token", "{\"ttl\": 3600}", &b);
  tl_json_get(b.data, "token", out, n);
  tl_secret(out);
  mg_buf_cleanup(&b);
}

MG_TEST(web_identity_from_environment) {
  REQUIRE_FAKES();
  tl_clean_env();
  role("arn:aws:iam::444444444444:role/irsa", "\"web_identity\": true");
  char tok[400], path[300];
  web_token(tok, sizeof tok);
  tl_path(path, sizeof path, "token");
  tl_write_in_place(path, tok, strlen(tok));
  setenv("AWS_WEB_IDENTITY_TOKEN_FILE", path, 1);
  setenv("AWS_ROLE_ARN", "arn:aws:iam::444444444444:role/irsa", 1);
  setenv("AWS_ROLE_SESSION_NAME", "moongate-pod", 1);
  setenv("AWS_ENDPOINT_URL_STS", tl_fk.sts, 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_WEB_IDENTITY};
  mg_creds_opts_t o = {.invalidate_interval_ms = 1, .retry_min_ms = 30000, .retry_max_ms = 30000};
  REQUIRE(start(&e, &conf, "webid-test", &o));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  CHECK_STR(v->source, "web-identity arn:aws:iam::444444444444:role/irsa");
  CHECK_STR(v->kind, "web_identity");
  char owner[200];
  tl_key_info(v->access_key_id, "principal", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:sts::444444444444:assumed-role/irsa/moongate-pod");
  /* The token file is read on every call: a bad token is reported. */
  tl_write_in_place(path, "eyJnot-a-valid-token-at-all", 27);
  tl_run_for(&e.loop, 5);
  mg_creds_invalidate(e.c, v);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  CHECK_STR(last_error(e.c), "STS AssumeRoleWithWebIdentity: HTTP 400 InvalidIdentityToken: The ID Token provided is "
                             "not a valid JWT. (You may see this error if you sent an Access Token) "
                             "(role arn:aws:iam::444444444444:role/irsa)");
  /* The old credentials are still handed out while they are valid. */
  mg_creds_value_t *v2 = mg_creds_current(e.c);
  CHECK(v2 == v);
  mg_creds_value_unref(v2);
  mg_creds_value_unref(v);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ AssumeRole */

MG_TEST(assume_role_into_a_second_account) {
  REQUIRE_FAKES();
  tl_clean_env();
  char akid[64], secret[128];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  role("arn:aws:iam::222222222222:role/amp-writer", "\"external_id\": \"ext-42\", \"trusted\": [\"111111111111\"]");
  mg_conf_creds_t src = {.kind = MG_CREDS_STATIC, .access_key_id = akid, .secret_access_key = secret};
  mg_conf_creds_t conf = {.kind = MG_CREDS_ASSUME_ROLE,
                          .role_arn = "arn:aws:iam::222222222222:role/amp-writer",
                          .external_id = "ext-42",
                          .role_session_name = "moongate-amp",
                          .duration_s = 900,
                          .sts_endpoint = tl_fk.sts,
                          .source = &src};
  env_t e;
  REQUIRE(start(&e, &conf, "assume-test", NULL));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  CHECK_STR(v->source, "assume-role arn:aws:iam::222222222222:role/amp-writer via static configuration");
  CHECK_STR(v->kind, "assume_role");
  CHECK(strncmp(v->access_key_id, "ASIA", 4) == 0 && v->session_token);
  int64_t left = v->expires_ms / 1000 - (int64_t)time(NULL);
  CHECK(left > 880 && left <= 900);
  char owner[200];
  tl_key_info(v->access_key_id, "principal", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:sts::222222222222:assumed-role/amp-writer/moongate-amp");
  mg_creds_value_unref(v);
  stop(&e);

  conf.external_id = "wrong";
  REQUIRE(start(&e, &conf, "assume-test", NULL));
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 5000), MG_ECREDS);
  CHECK_STR(last_error(e.c),
            "STS AssumeRole: HTTP 403 AccessDenied: User: arn:aws:iam::111111111111:user/moongate is "
            "not authorized to perform: sts:AssumeRole on resource: "
            "arn:aws:iam::222222222222:role/amp-writer (role arn:aws:iam::222222222222:role/amp-writer)");
  stop(&e);

  /* Chained: 111 -> 222 -> 333. */
  role("arn:aws:iam::333333333333:role/second-hop", "\"trusted\": [\"arn:aws:iam::222222222222:role/amp-writer\"]");
  conf.external_id = "ext-42";
  mg_conf_creds_t hop = {.kind = MG_CREDS_ASSUME_ROLE, .role_arn = "arn:aws:iam::333333333333:role/second-hop",
                         .sts_endpoint = tl_fk.sts, .source = &conf};
  REQUIRE(start(&e, &hop, "chained-test", NULL));
  v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  CHECK_STR(v->source, "assume-role arn:aws:iam::333333333333:role/second-hop via assume-role "
                       "arn:aws:iam::222222222222:role/amp-writer via static configuration");
  tl_key_info(v->access_key_id, "role", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:iam::333333333333:role/second-hop");
  mg_creds_value_unref(v);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

MG_TEST(invalidate_shares_one_sts_call) {
  REQUIRE_FAKES();
  tl_clean_env();
  char akid[64], secret[128];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  role("arn:aws:iam::222222222222:role/shared", "\"trusted\": [\"111111111111\"]");
  mg_conf_creds_t src = {.kind = MG_CREDS_STATIC, .access_key_id = akid, .secret_access_key = secret};
  mg_conf_creds_t conf = {.kind = MG_CREDS_ASSUME_ROLE, .role_arn = "arn:aws:iam::222222222222:role/shared",
                          .sts_endpoint = tl_fk.sts, .source = &src};
  env_t e;
  mg_creds_opts_t o = {.invalidate_interval_ms = 5000};
  REQUIRE(start(&e, &conf, "share-test", &o));
  mg_creds_value_t *v1 = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v1);
  long issued = tl_counter("sts_issued");
  for (int i = 0; i < 5; i++) mg_creds_invalidate(e.c, v1); /* five writers got 403 ExpiredToken */
  mg_creds_value_t *v2 = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v2);
  CHECK(v2 != v1 && strcmp(v2->access_key_id, v1->access_key_id) != 0);
  CHECK_INT(tl_counter("sts_issued") - issued, 1);
  mg_creds_invalidate(e.c, v1); /* stale rejection: nothing */
  mg_creds_invalidate(e.c, v2); /* within the interval: rate-limited */
  tl_run_for(&e.loop, 300);
  CHECK_INT(tl_counter("sts_issued") - issued, 1);
  mg_creds_value_unref(v1);
  mg_creds_value_unref(v2);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

MG_TEST(sts_refuses_or_fails) {
  REQUIRE_FAKES();
  tl_clean_env();
  char akid[64], secret[128];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  role("arn:aws:iam::222222222222:role/flaky", "\"trusted\": [\"111111111111\"]");
  mg_conf_creds_t src = {.kind = MG_CREDS_STATIC, .access_key_id = akid, .secret_access_key = secret};
  mg_conf_creds_t conf = {.kind = MG_CREDS_ASSUME_ROLE, .role_arn = "arn:aws:iam::222222222222:role/flaky",
                          .sts_endpoint = tl_fk.sts, .source = &src};
  env_t e;
  mg_creds_opts_t o = {.invalidate_interval_ms = 1, .retry_min_ms = 100, .retry_max_ms = 200};
  REQUIRE(start(&e, &conf, "flaky-test", &o));
  mg_creds_value_t *v1 = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v1);
  /* STS has a bad moment: the current credentials stay in use, the
   * refresh is retried and succeeds, one warning is logged. */
  tl_ctl_ok("/control/fail", "{\"endpoint\": \"sts\", \"status\": 503, \"code\": \"ServiceUnavailable\", "
                             "\"message\": \"Service is unable to handle request.\", \"times\": 2}",
            NULL);
  long issued = tl_counter("sts_issued");
  mg_creds_invalidate(e.c, v1);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  mg_creds_value_t *still = mg_creds_current(e.c);
  CHECK(still == v1);
  mg_creds_value_unref(still);
  CHECK(strstr(last_error(e.c), "STS AssumeRole: HTTP 503 ServiceUnavailable: Service is unable to handle request.") !=
        NULL);
  CHECK_INT(tl_counter("sts_issued"), issued);
  /* The retries get through once STS is back. */
  mg_creds_value_t *v2 = NULL;
  for (int i = 0; i < 20 && (!v2 || v2 == v1); i++) {
    mg_creds_value_unref(v2);
    tl_run_for(&e.loop, 100);
    v2 = mg_creds_current(e.c);
  }
  CHECK(v2 && v2 != v1);
  CHECK_INT(tl_counter("sts_issued") - issued, 1);
  tl_secret_value(v2);
  /* The source's key is revoked: STS says so, naming the code. */
  char body[200];
  snprintf(body, sizeof body, "{\"access_key_id\": \"%s\"}", akid);
  tl_ctl_ok("/control/revoke", body, NULL);
  mg_creds_invalidate(e.c, v2);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 3000), MG_ECREDS);
  CHECK_STR(last_error(e.c), "STS AssumeRole: HTTP 403 InvalidClientTokenId: The security token included in the "
                             "request is invalid. (role arn:aws:iam::222222222222:role/flaky)");
  mg_creds_value_unref(v2);
  CHECK_INT(tl_log_count("level=warn mod=creds event=credentials_refresh_failed creds=flaky-test"), 2);
  mg_creds_value_unref(v1);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ roles from ~/.aws/config */

MG_TEST(profile_roles) {
  REQUIRE_FAKES();
  tl_clean_env();
  char akid[64], secret[128], akid2[64], secret2[128], dir[300], cred[300], config[300], text[1024];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  tl_user("111111111111", akid2, sizeof akid2, secret2, sizeof secret2);
  role("arn:aws:iam::222222222222:role/from-profile", "\"external_id\": \"ext-7\", \"trusted\": [\"111111111111\"]");
  role("arn:aws:iam::555555555555:role/ec2-base", NULL);
  role("arn:aws:iam::222222222222:role/from-ec2", NULL);
  set("{\"imds_role\": \"arn:aws:iam::555555555555:role/ec2-base\"}");
  tl_path(dir, sizeof dir, ".aws");
  tl_path(cred, sizeof cred, ".aws/credentials");
  tl_path(config, sizeof config, ".aws/config");
  tl_mkdir(dir);
  snprintf(text, sizeof text, "[base]\naws_access_key_id = %s\naws_secret_access_key = %s\n", akid, secret);
  tl_write_in_place(cred, text, strlen(text));
  const char *cfg = "[profile amp]\nrole_arn = arn:aws:iam::222222222222:role/from-profile\nsource_profile = base\n"
                    "external_id = ext-7\nrole_session_name = moongate-profile\nduration_seconds = 1200\n"
                    "region = us-east-1\n"
                    "[profile ec2]\nrole_arn = arn:aws:iam::222222222222:role/from-ec2\n"
                    "credential_source = Ec2InstanceMetadata\n"
                    "[profile wi]\nrole_arn = arn:aws:iam::444444444444:role/profile-irsa\n"
                    "web_identity_token_file = ~/wi-token\nrole_session_name = from-profile\n";
  tl_write_in_place(config, cfg, strlen(cfg));
  setenv("AWS_ENDPOINT_URL_STS", tl_fk.sts, 1);
  setenv("AWS_PROFILE", "amp", 1);
  env_t e;
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE};
  mg_creds_opts_t o = {.invalidate_interval_ms = 1};
  REQUIRE(start(&e, &conf, "profile-role-test", &o));
  mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  char want[600], owner[200];
  snprintf(want, sizeof want, "assume-role arn:aws:iam::222222222222:role/from-profile via shared-credentials-file %s "
                              "[base]", cred);
  CHECK_STR(v->source, want);
  int64_t left = v->expires_ms / 1000 - (int64_t)time(NULL);
  CHECK(left > 1180 && left <= 1200);
  tl_key_info(v->access_key_id, "principal", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:sts::222222222222:assumed-role/from-profile/moongate-profile");
  /* The base keys rotate in the file and the old ones are revoked: the
   * next refresh signs with the new keys (the plan is rebuilt). */
  snprintf(text, sizeof text, "[base]\naws_access_key_id = %s\naws_secret_access_key = %s\n", akid2, secret2);
  tl_write_rename(cred, text);
  char body[200];
  snprintf(body, sizeof body, "{\"access_key_id\": \"%s\"}", akid);
  tl_ctl_ok("/control/revoke", body, NULL);
  tl_run_for(&e.loop, 200);
  mg_creds_invalidate(e.c, v);
  CHECK_INT(tl_wait_refresh(&e.loop, e.c, 5000), 0);
  mg_creds_value_t *v2 = mg_creds_current(e.c);
  REQUIRE(v2);
  CHECK(strcmp(v2->access_key_id, v->access_key_id) != 0);
  tl_secret_value(v2);
  mg_creds_value_unref(v2);
  mg_creds_value_unref(v);
  stop(&e);

  unsetenv("AWS_EC2_METADATA_DISABLED");
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", tl_fk.imds, 1);
  conf.profile = "ec2";
  REQUIRE(start(&e, &conf, "profile-role-test", NULL));
  v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  snprintf(want, sizeof want, "assume-role arn:aws:iam::222222222222:role/from-ec2 via imds %s role ec2-base",
           tl_fk.imds);
  CHECK_STR(v->source, want);
  mg_creds_value_unref(v);
  stop(&e);

  /* web_identity_token_file in a profile ("~/" is the home directory). */
  role("arn:aws:iam::444444444444:role/profile-irsa", "\"web_identity\": true");
  char tok[400], tokpath[300];
  mg_buf_t b;
  mg_buf_init(&b, 0);
  tl_ctl_ok("/control/web_token", "{\"ttl\": 3600}", &b);
  tl_json_get(b.data, "token", tok, sizeof tok);
  tl_secret(tok);
  mg_buf_cleanup(&b);
  tl_path(tokpath, sizeof tokpath, "wi-token");
  tl_write_in_place(tokpath, tok, strlen(tok));
  conf.profile = "wi";
  REQUIRE(start(&e, &conf, "profile-role-test", NULL));
  v = tl_get(&e.loop, e.c, 5000);
  REQUIRE(v);
  CHECK_STR(v->source, "web-identity arn:aws:iam::444444444444:role/profile-irsa");
  tl_key_info(v->access_key_id, "principal", owner, sizeof owner);
  CHECK_STR(owner, "arn:aws:sts::444444444444:assumed-role/profile-irsa/from-profile");
  mg_creds_value_unref(v);
  stop(&e);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ the default chain's order */

MG_TEST(default_chain_order) {
  REQUIRE_FAKES();
  role("arn:aws:iam::444444444444:role/chain-irsa", "\"web_identity\": true");
  role("arn:aws:iam::666666666666:role/chain-task", NULL);
  role("arn:aws:iam::555555555555:role/chain-ec2", NULL);
  set("{\"ecs_role\": \"arn:aws:iam::666666666666:role/chain-task\", \"ecs_auth\": null, "
      "\"imds_role\": \"arn:aws:iam::555555555555:role/chain-ec2\"}");
  char tok[400];
  web_token(tok, sizeof tok);
  /* Which sources are set up, and which one must win. */
  static const struct {
    bool env, webid, file, ecs, imds;
    const char *kind;
  } cases[] = {
      {true, true, true, true, true, "env"},   {false, true, true, true, true, "web_identity"},
      {false, false, true, true, true, "profile"}, {false, false, false, true, true, "ecs"},
      {false, false, false, false, true, "imds"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tl_clean_env();
    char path[300], uri[300];
    if (cases[i].env) {
      setenv("AWS_ACCESS_KEY_ID", "AKIACHAINENV0001", 1);
      setenv("AWS_SECRET_ACCESS_KEY", "chainenvsecret000000000001", 1);
      tl_secret("chainenvsecret000000000001");
    }
    if (cases[i].webid) {
      tl_path(path, sizeof path, "token");
      tl_write_in_place(path, tok, strlen(tok));
      setenv("AWS_WEB_IDENTITY_TOKEN_FILE", path, 1);
      setenv("AWS_ROLE_ARN", "arn:aws:iam::444444444444:role/chain-irsa", 1);
      setenv("AWS_ENDPOINT_URL_STS", tl_fk.sts, 1);
    }
    if (cases[i].file) {
      tl_path(path, sizeof path, ".aws");
      tl_mkdir(path);
      tl_path(path, sizeof path, ".aws/credentials");
      const char *t =
          "[default]\naws_access_key_id = AKIACHAINFILE001\naws_secret_access_key = chainfilesecret0000001\n";
      tl_write_in_place(path, t, strlen(t));
      tl_secret("chainfilesecret0000001");
    }
    if (cases[i].ecs) {
      snprintf(uri, sizeof uri, "%s%s", tl_fk.ecs, tl_fk.ecs_path);
      setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri, 1);
    }
    if (cases[i].imds) {
      unsetenv("AWS_EC2_METADATA_DISABLED");
      setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", tl_fk.imds, 1);
    }
    env_t e;
    mg_conf_creds_t conf = {.kind = MG_CREDS_CHAIN};
    REQUIRE(start(&e, &conf, "order-test", NULL));
    mg_creds_value_t *v = tl_get(&e.loop, e.c, 5000);
    if (!v) MG_FAIL_("case %zu: no credentials: %s", i, last_error(e.c));
    else if (strcmp(v->kind, cases[i].kind) != 0) MG_FAIL_("case %zu: %s won, want %s", i, v->kind, cases[i].kind);
    mg_creds_value_unref(v);
    stop(&e);
    tl_rm_rf(tl_home);
  }
  tl_check_no_secrets(NULL);
}

MG_TEST_MAIN()
