/* mg_creds rotation under use: six sources at once on one loop (STS
 * AssumeRole, web identity, IMDSv2, ECS, credential_process, and a shared
 * credentials file rewritten SSM-style every 2.5 s), each handing out
 * 10-second credentials, for at least five rotations each. Every 10 ms
 * mg_creds_current must return credentials (no gap), and every second each
 * source's current credentials sign a remote_write that the fake AMP
 * workspace checks exactly like AWS: none may be refused. */
#include "creds_testlib.h"
#include "mg_sigv4.h"

__attribute__((constructor)) static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  tl_capture_logs();
}

#define NSRC 6
#define ROLE "arn:aws:iam::222222222222:role/rot"
#define WANT_KEYS 6 /* five rotations */

typedef struct src {
  const char *name;
  mg_creds_t *c;
  char keys[64][24];
  int nkeys;
  bool started;
  int gaps;
  int amp_ok, amp_fail;
  char amp_last_fail[200];
} src_t;

typedef struct run {
  uv_loop_t *loop;
  mg_http_client_t *http;
  src_t src[NSRC];
  const char *file;
  uint64_t next_file_ms, next_amp_ms;
  int file_writes;
  int inflight;
} run_t;

/* ------------------------------------------------------------ remote_write to the fake AMP */

typedef struct amp_req {
  src_t *s;
  mg_creds_value_t *v;
  run_t *r;
  unsigned char body[256];
  size_t len;
} amp_req_t;

static size_t put_varint(unsigned char *o, uint64_t v) {
  size_t n = 0;
  do {
    o[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return n;
}

/* WriteRequest{timeseries{labels{__name__=rotation_test, source=<name>}, samples{1, now}}},
 * snappy-compressed as one literal. */
static size_t write_body(unsigned char *out, const char *source) {
  unsigned char ts[160], pb[192], lab[64], smp[24];
  size_t t = 0, n;
  n = 0;
  lab[n++] = 0x0a, lab[n++] = 8, memcpy(lab + n, "__name__", 8), n += 8;
  lab[n++] = 0x12, lab[n++] = 13, memcpy(lab + n, "rotation_test", 13), n += 13;
  ts[t++] = 0x0a, ts[t++] = (unsigned char)n, memcpy(ts + t, lab, n), t += n;
  size_t sl = strlen(source);
  n = 0;
  lab[n++] = 0x0a, lab[n++] = 6, memcpy(lab + n, "source", 6), n += 6;
  lab[n++] = 0x12, lab[n++] = (unsigned char)sl, memcpy(lab + n, source, sl), n += sl;
  ts[t++] = 0x0a, ts[t++] = (unsigned char)n, memcpy(ts + t, lab, n), t += n;
  double one = 1.0;
  n = 0;
  smp[n++] = 0x09, memcpy(smp + n, &one, 8), n += 8;
  smp[n++] = 0x10, n += put_varint(smp + n, (uint64_t)time(NULL) * 1000);
  ts[t++] = 0x12, ts[t++] = (unsigned char)n, memcpy(ts + t, smp, n), t += n;
  size_t p = 0;
  pb[p++] = 0x0a, pb[p++] = (unsigned char)t, memcpy(pb + p, ts, t), p += t;
  size_t o = put_varint(out, p);
  out[o++] = 60 << 2, out[o++] = (unsigned char)(p - 1); /* literal of p bytes */
  memcpy(out + o, pb, p);
  return o + p;
}

static void on_amp(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  amp_req_t *q = ud;
  q->r->inflight--;
  if (!err && resp->status == 200) {
    q->s->amp_ok++;
  } else {
    q->s->amp_fail++;
    const char *et = resp ? mg_http_response_header(resp, "x-amzn-ErrorType") : NULL;
    snprintf(q->s->amp_last_fail, sizeof q->s->amp_last_fail, "%s %d %s", err ? mg_err_name(err) : "HTTP",
             resp ? resp->status : 0, et ? et : (detail ? detail : ""));
    if (resp && mg_creds_is_rejection(resp->status, et, resp->body->data, resp->body->len))
      mg_creds_invalidate(q->s->c, q->v); /* what remote_write does on 403 ExpiredToken */
  }
  mg_creds_value_unref(q->v);
  free(q);
}

static void amp_send(run_t *r, src_t *s) {
  mg_creds_value_t *v = mg_creds_current(s->c);
  if (!v) return;
  amp_req_t *q = calloc(1, sizeof *q);
  q->s = s;
  q->v = v;
  q->r = r;
  q->len = write_body(q->body, s->name);
  const char *u = tl_fk.amp + 7; /* after "http://" */
  const char *slash = strchr(u, '/');
  char host[64], path[200];
  snprintf(host, sizeof host, "%.*s", (int)(slash - u), u);
  snprintf(path, sizeof path, "%s", slash);
  mg_sigv4_header_t sh[] = {{"host", host},
                            {"content-encoding", "snappy"},
                            {"content-type", "application/x-protobuf"},
                            {"x-prometheus-remote-write-version", "0.1.0"}};
  mg_sigv4_request_t sreq = {.method = "POST", .url_path = path, .headers = sh, .nheaders = 4, .payload = q->body,
                             .payload_len = q->len, .region = tl_fk.region, .service = "aps",
                             .unix_time = (int64_t)time(NULL)};
  mg_sigv4_creds_t sc = {v->access_key_id, v->secret_access_key, v->session_token};
  mg_sigv4_result_t res;
  if (mg_sigv4_sign(NULL, &sreq, &sc, MG_SIGV4_ADD_CONTENT_SHA256, &res, NULL) != 0) {
    s->amp_fail++;
    snprintf(s->amp_last_fail, sizeof s->amp_last_fail, "signing failed");
    mg_creds_value_unref(v);
    free(q);
    return;
  }
  mg_http_header_t h[8] = {{"Content-Encoding", "snappy"},
                           {"Content-Type", "application/x-protobuf"},
                           {"X-Prometheus-Remote-Write-Version", "0.1.0"}};
  size_t nh = 3;
  for (size_t i = 0; i < res.nadd; i++) h[nh++] = (mg_http_header_t){res.add[i].name, res.add[i].value};
  mg_http_request_t req = {.method = "POST", .url = tl_fk.amp, .headers = h, .nheaders = nh, .body = q->body,
                           .body_len = q->len, .timeout_ms = 5000};
  if (mg_http_client_request(r->http, &req, on_amp, q, NULL) != 0) {
    s->amp_fail++;
    mg_creds_value_unref(v);
    free(q);
    return;
  }
  r->inflight++;
}

/* ------------------------------------------------------------ the monitor */

static void write_file_creds(run_t *r) {
  char akid[64], secret[128], token[4096], text[5000];
  tl_issue(ROLE, 60, akid, secret, token, sizeof token);
  snprintf(text, sizeof text, "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\naws_session_token = %s\n",
           akid, secret, token);
  if (r->file_writes++ % 2) tl_write_rename(r->file, text);
  else tl_write_in_place(r->file, text, strlen(text));
}

static bool all_rotated(run_t *r) {
  for (int i = 0; i < NSRC; i++)
    if (r->src[i].nkeys < WANT_KEYS) return false;
  return true;
}

static bool monitor(void *ud) {
  run_t *r = ud;
  uint64_t now = tl_now_ms();
  for (int i = 0; i < NSRC; i++) {
    src_t *s = &r->src[i];
    mg_creds_value_t *v = mg_creds_current(s->c);
    if (!v) {
      if (s->started) s->gaps++;
      continue;
    }
    s->started = true;
    bool seen = false;
    for (int k = 0; k < s->nkeys && !seen; k++) seen = strcmp(s->keys[k], v->access_key_id) == 0;
    if (!seen && s->nkeys < 64) {
      snprintf(s->keys[s->nkeys++], sizeof s->keys[0], "%s", v->access_key_id);
      tl_secret_value(v);
    }
    mg_creds_value_unref(v);
  }
  if (now >= r->next_file_ms) {
    write_file_creds(r);
    r->next_file_ms = now + 2500;
  }
  if (now >= r->next_amp_ms) {
    for (int i = 0; i < NSRC; i++) amp_send(r, &r->src[i]);
    r->next_amp_ms = now + 1000;
  }
  return all_rotated(r) && r->inflight == 0;
}

static bool settled(void *ud) { return ((run_t *)ud)->inflight == 0; }

static const char issue_py[] =
    "import json, os, urllib.request\n"
    "req = urllib.request.Request(os.environ['FAKES_CONTROL'] + '/control/issue', method='POST',\n"
    "    data=json.dumps({'role': os.environ['ROT_ROLE'], 'duration': 10}).encode())\n"
    "d = json.loads(urllib.request.urlopen(req, timeout=10).read())\n"
    "print(json.dumps({'Version': 1, 'AccessKeyId': d['access_key_id'], 'SecretAccessKey': d['secret_access_key'],\n"
    "                  'SessionToken': d['session_token'], 'Expiration': d['expiration']}))\n";

MG_TEST(rotations_without_gaps_and_without_refused_writes) {
  if (!tl_fakes_start()) {
    MG_FAIL_("cannot start tests/integration/awsfakes.py (python3 + botocore)");
    return;
  }
  tl_clean_env();
  char akid[64], secret[128];
  tl_user("111111111111", akid, sizeof akid, secret, sizeof secret);
  tl_ctl_ok("/control/role", "{\"arn\": \"" ROLE "\", \"issue_duration\": 10, \"web_identity\": true}", NULL);
  tl_ctl_ok("/control/set", "{\"imds_role\": \"" ROLE "\", \"imds_duration\": 10, \"imds_refresh_before\": 7, "
                            "\"ecs_role\": \"" ROLE "\", \"ecs_duration\": 10, \"ecs_auth\": null}",
            NULL);
  mg_buf_t b;
  mg_buf_init(&b, 0);
  char tok[400], tokfile[300], script[300], cmd[400], dir[300], cred[300], uri[300];
  tl_ctl_ok("/control/web_token", "{\"ttl\": 3600}", &b);
  tl_json_get(b.data, "token", tok, sizeof tok);
  tl_secret(tok);
  mg_buf_cleanup(&b);
  tl_path(tokfile, sizeof tokfile, "token");
  tl_write_in_place(tokfile, tok, strlen(tok));
  tl_path(script, sizeof script, "issue.py");
  tl_write_in_place(script, issue_py, strlen(issue_py));
  snprintf(cmd, sizeof cmd, "python3 '%s'", script);
  setenv("FAKES_CONTROL", tl_fk.control, 1);
  setenv("ROT_ROLE", ROLE, 1);
  tl_path(dir, sizeof dir, ".aws");
  tl_mkdir(dir);
  tl_path(cred, sizeof cred, ".aws/credentials");
  snprintf(uri, sizeof uri, "%s%s", tl_fk.ecs, tl_fk.ecs_path);
  unsetenv("AWS_EC2_METADATA_DISABLED");
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", tl_fk.imds, 1);
  setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri, 1);

  uv_loop_t loop;
  uv_loop_init(&loop);
  run_t r = {.loop = &loop, .http = mg_http_client_new(&loop, NULL), .file = cred};
  write_file_creds(&r);
  r.next_file_ms = tl_now_ms() + 2500;
  mg_conf_creds_t user = {.kind = MG_CREDS_STATIC, .access_key_id = akid, .secret_access_key = secret};
  mg_conf_creds_t confs[NSRC] = {
      {.kind = MG_CREDS_ASSUME_ROLE, .role_arn = ROLE, .sts_endpoint = tl_fk.sts, .source = &user},
      {.kind = MG_CREDS_WEB_IDENTITY, .role_arn = ROLE, .web_identity_token_file = tokfile, .sts_endpoint = tl_fk.sts},
      {.kind = MG_CREDS_IMDS},
      {.kind = MG_CREDS_ECS},
      {.kind = MG_CREDS_PROCESS, .process = cmd},
      {.kind = MG_CREDS_PROFILE},
  };
  static const char *names[NSRC] = {"rot-assume", "rot-webid", "rot-imds", "rot-ecs", "rot-process", "rot-file"};
  for (int i = 0; i < NSRC; i++) {
    int err;
    r.src[i].name = names[i];
    r.src[i].c = mg_creds_new(&loop, r.http, &confs[i], tl_fk.region, names[i], NULL, &err);
    REQUIRE(r.src[i].c);
  }
  uint64_t t0 = tl_now_ms();
  /* Six keys per source take ~24 s (10 s credentials refreshed ahead of
   * expiry); the bound leaves room for a loaded machine (credential_process
   * starts python3 for every refresh), and the loop ends as soon as all
   * have rotated. */
  bool done = tl_run_until(&loop, monitor, &r, 45000, 10);
  uint64_t took = tl_now_ms() - t0;
  tl_run_until(&loop, settled, &r, 5000, 10);
  printf("  %.1f s:", (double)took / 1000);
  for (int i = 0; i < NSRC; i++)
    printf(" %s=%d keys/%d writes", r.src[i].name, r.src[i].nkeys, r.src[i].amp_ok + r.src[i].amp_fail);
  printf("\n");
  CHECK(done);
  mg_buf_t m;
  mg_buf_init(&m, 0);
  mg_metrics_render(&m);
  for (int i = 0; i < NSRC; i++) {
    src_t *s = &r.src[i];
    if (s->nkeys < WANT_KEYS) MG_FAIL_("%s: %d distinct keys (want >= %d)", s->name, s->nkeys, WANT_KEYS);
    if (s->gaps) MG_FAIL_("%s: mg_creds_current returned NULL %d times after the first credentials", s->name, s->gaps);
    if (s->amp_fail) MG_FAIL_("%s: %d writes refused (last: %s)", s->name, s->amp_fail, s->amp_last_fail);
    if (s->amp_ok < 15) MG_FAIL_("%s: only %d writes accepted", s->name, s->amp_ok);
    char want[200];
    snprintf(want, sizeof want, "moongate_aws_credentials_refresh_total{credentials=\"%s\"", s->name);
    CHECK(strstr(m.data, want) != NULL);
  }
  mg_buf_cleanup(&m);
  CHECK_INT(tl_log_count("level=warn mod=creds"), 0);
  CHECK_INT(tl_log_count("level=error mod=creds"), 0);
  CHECK(tl_log_count("event=credentials_rotated") >= NSRC * (WANT_KEYS - 1));
  for (int i = 0; i < NSRC; i++) mg_creds_free(r.src[i].c);
  tl_teardown(&loop, NULL, r.http);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

MG_TEST_MAIN()
