/* Tests for mg_sd_ec2 against an in-process fake EC2 endpoint (and IMDS)
 * on loopback that checks each request's SigV4 signature: Prometheus's
 * labels of realistic instances, pagination, filters in the request,
 * failures that keep targets and are logged once per cause, credential
 * refusals, the region from IMDSv2, option checks, stop in flight. */
#include <stdarg.h>
#include <time.h>

#include "creds_testlib.h"
#include "mg_conf.h"
#include "mg_http_server.h"
#include "mg_sd.h"
#include "mg_sd_ec2.h"
#include "mg_sigv4.h"

#define AKID "AKIDEXAMPLE0EC2SD"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

/* ------------------------------------------------------------ the fake */

typedef struct fake {
  mg_http_server_t *srv;
  char url[64];
  char region[32];
  const char *akid, *secret; /* the one key it knows */
  const char *const *pages;  /* DescribeInstances pages; page i is asked for with NextToken "tok-<i+1>" */
  size_t npages;
  /* behaviour */
  int fail_status, fail_times; /* the next fail_times DescribeInstances answers */
  const char *fail_code, *fail_msg;
  bool zones_fail;
  bool refuse_key; /* AuthFailure for every signed request */
  /* records */
  int instances, zones, bad_sig, refused, imds_tokens, imds_regions;
  char form[4096];     /* last DescribeInstances body */
  char first_form[4096];
} fake_t;

static const char zones_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<DescribeAvailabilityZonesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n"
    "  <requestId>e23c5a54-a29c-43ee-8b55-0c13c26e9e01</requestId>\n"
    "  <availabilityZoneInfo>\n"
    "    <item><zoneName>us-east-1a</zoneName><zoneState>available</zoneState><regionName>us-east-1</regionName>"
    "<zoneId>use1-az6</zoneId><zoneType>availability-zone</zoneType><messageSet/></item>\n"
    "    <item><zoneName>us-east-1b</zoneName><zoneState>available</zoneState><regionName>us-east-1</regionName>"
    "<zoneId>use1-az1</zoneId><zoneType>availability-zone</zoneType><messageSet/></item>\n"
    "  </availabilityZoneInfo>\n"
    "</DescribeAvailabilityZonesResponse>\n";

/* Two reservations: a VPC instance in spot with tags, three interfaces (two
 * subnets, IPv6 with a primary address) and no public IP; a stopped one
 * without a private IP; a Windows instance outside a VPC with a public IP. */
static const char page1_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n"
    " <requestId>8f7724cf-496f-496e-8fe3-example</requestId>\n"
    " <reservationSet>\n"
    "  <item>\n"
    "   <reservationId>r-1234567890abcdef0</reservationId>\n"
    "   <ownerId>123456789012</ownerId>\n"
    "   <groupSet/>\n"
    "   <instancesSet>\n"
    "    <item>\n"
    "     <instanceId>i-1234567890abcdef0</instanceId>\n"
    "     <imageId>ami-0abcdef1234567890</imageId>\n"
    "     <instanceState><code>16</code><name>running</name></instanceState>\n"
    "     <privateDnsName>ip-10-0-0-157.ec2.internal</privateDnsName>\n"
    "     <dnsName/>\n"
    "     <reason/>\n"
    "     <amiLaunchIndex>0</amiLaunchIndex>\n"
    "     <productCodes/>\n"
    "     <instanceType>c6g.large</instanceType>\n"
    "     <launchTime>2024-05-01T12:00:00.000Z</launchTime>\n"
    "     <placement><availabilityZone>us-east-1a</availabilityZone><groupName/><tenancy>default</tenancy>"
    "</placement>\n"
    "     <monitoring><state>disabled</state></monitoring>\n"
    "     <subnetId>subnet-aaaa</subnetId>\n"
    "     <vpcId>vpc-1a2b3c4d</vpcId>\n"
    "     <privateIpAddress>10.0.0.157</privateIpAddress>\n"
    "     <sourceDestCheck>true</sourceDestCheck>\n"
    "     <groupSet><item><groupId>sg-0123</groupId><groupName>web</groupName></item></groupSet>\n"
    "     <architecture>arm64</architecture>\n"
    "     <rootDeviceType>ebs</rootDeviceType>\n"
    "     <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1</volumeId>"
    "<status>attached</status></ebs></item></blockDeviceMapping>\n"
    "     <instanceLifecycle>spot</instanceLifecycle>\n"
    "     <virtualizationType>hvm</virtualizationType>\n"
    "     <tagSet>\n"
    "      <item><key>Name</key><value>web-1</value></item>\n"
    "      <item><key>aws:autoscaling:groupName</key><value>asg-web</value></item>\n"
    "      <item><key>team-owner</key><value>payments &amp; risk</value></item>\n"
    "      <item><key>\xc3\x9cn\xc3\xaf" "code</key><value>yes</value></item>\n"
    "      <item><key>empty</key><value/></item>\n"
    "     </tagSet>\n"
    "     <networkInterfaceSet>\n"
    "      <item>\n"
    "       <networkInterfaceId>eni-1</networkInterfaceId>\n"
    "       <subnetId>subnet-aaaa</subnetId>\n"
    "       <vpcId>vpc-1a2b3c4d</vpcId>\n"
    "       <ownerId>123456789012</ownerId>\n"
    "       <privateIpAddress>10.0.0.157</privateIpAddress>\n"
    "       <ipv6AddressesSet>\n"
    "        <item><ipv6Address>2001:db8::1</ipv6Address><isPrimaryIpv6>true</isPrimaryIpv6></item>\n"
    "        <item><ipv6Address>2001:db8::2</ipv6Address><isPrimaryIpv6>false</isPrimaryIpv6></item>\n"
    "       </ipv6AddressesSet>\n"
    "       <attachment><attachmentId>eni-attach-1</attachmentId><deviceIndex>0</deviceIndex>"
    "<status>attached</status></attachment>\n"
    "      </item>\n"
    "      <item>\n"
    "       <networkInterfaceId>eni-2</networkInterfaceId>\n"
    "       <attachment><deviceIndex>2</deviceIndex></attachment>\n"
    "       <ipv6AddressesSet><item><isPrimaryIpv6>true</isPrimaryIpv6><ipv6Address>2001:db8:1::5</ipv6Address>"
    "</item></ipv6AddressesSet>\n"
    "       <subnetId>subnet-bbbb</subnetId>\n"
    "      </item>\n"
    "      <item><networkInterfaceId>eni-3</networkInterfaceId><subnetId>subnet-aaaa</subnetId>"
    "<attachment><deviceIndex>1</deviceIndex></attachment></item>\n"
    "      <item><networkInterfaceId>eni-4</networkInterfaceId><ipv6AddressesSet><item>"
    "<ipv6Address>2001:db8:9::9</ipv6Address></item></ipv6AddressesSet></item>\n"
    "     </networkInterfaceSet>\n"
    "    </item>\n"
    "    <item>\n"
    "     <instanceId>i-0stopped000000000</instanceId>\n"
    "     <imageId>ami-0abcdef1234567890</imageId>\n"
    "     <instanceState><code>80</code><name>stopped</name></instanceState>\n"
    "     <privateDnsName/>\n"
    "     <instanceType>t3.micro</instanceType>\n"
    "     <placement><availabilityZone>us-east-1a</availabilityZone></placement>\n"
    "    </item>\n"
    "   </instancesSet>\n"
    "  </item>\n"
    "  <item>\n"
    "   <reservationId>r-0fedcba0987654321</reservationId>\n"
    "   <instancesSet>\n"
    "    <item>\n"
    "     <instanceId>i-0win0000000000001</instanceId>\n"
    "     <imageId>ami-0win</imageId>\n"
    "     <instanceState><code>16</code><name>running</name></instanceState>\n"
    "     <privateDnsName>ip-172-31-5-6.ec2.internal</privateDnsName>\n"
    "     <dnsName>ec2-54-12-34-56.compute-1.amazonaws.com</dnsName>\n"
    "     <instanceType>m5.xlarge</instanceType>\n"
    "     <placement><availabilityZone>us-east-1b</availabilityZone></placement>\n"
    "     <platform>windows</platform>\n"
    "     <privateIpAddress>172.31.5.6</privateIpAddress>\n"
    "     <ipAddress>54.12.34.56</ipAddress>\n"
    "     <architecture>x86_64</architecture>\n"
    "     <tagSet><item><key>Name</key><value>&lt;win&gt;</value></item></tagSet>\n"
    "    </item>\n"
    "   </instancesSet>\n"
    "   <ownerId>210987654321</ownerId>\n"
    "  </item>\n"
    " </reservationSet>\n"
    " <nextToken>tok-1</nextToken>\n"
    "</DescribeInstancesResponse>\n";

static const char page2_xml[] =
    "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
    "<requestId>2</requestId><reservationSet><item><ownerId>123456789012</ownerId><instancesSet><item>"
    "<instanceId>i-0page2</instanceId><imageId>ami-2</imageId><instanceState><name>pending</name></instanceState>"
    "<instanceType>t4g.nano</instanceType><placement><availabilityZone>us-east-1z</availabilityZone></placement>"
    "<privateIpAddress>10.0.9.9</privateIpAddress><vpcId>vpc-9</vpcId><subnetId>subnet-9</subnetId>"
    "</item></instancesSet></item></reservationSet><nextToken/></DescribeInstancesResponse>";

static const char empty_page_xml[] =
    "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>3</requestId>"
    "<reservationSet/></DescribeInstancesResponse>";

static void ec2_error(mg_http_sresp_t *resp, int status, const char *code, const char *msg) {
  resp->status = status;
  mg_http_sresp_header(resp, "Content-Type", "text/xml;charset=UTF-8");
  mg_buf_printf(&resp->body,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>%s</Code><Message>%s"
                "</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>",
                code, msg);
}

/* Value of name in a form body, percent-decoded, into out ("" if absent). */
static void form_get(mg_str_t body, const char *name, char *out, size_t n) {
  out[0] = '\0';
  size_t nl = strlen(name);
  for (size_t i = 0; i < body.n;) {
    size_t end = i;
    while (end < body.n && body.p[end] != '&') end++;
    if (end - i > nl && memcmp(body.p + i, name, nl) == 0 && body.p[i + nl] == '=') {
      size_t o = 0;
      for (size_t k = i + nl + 1; k < end && o + 1 < n; k++) {
        unsigned int c;
        if (body.p[k] == '%' && k + 2 < end && sscanf(body.p + k + 1, "%2x", &c) == 1) {
          out[o++] = (char)c;
          k += 2;
        } else {
          out[o++] = body.p[k];
        }
      }
      out[o] = '\0';
      return;
    }
    i = end + 1;
  }
}

/* Recompute the signature with the known key; true when it matches. */
static bool signature_ok(fake_t *f, const mg_http_sreq_t *req) {
  const char *auth = mg_http_sreq_header(req, "authorization");
  const char *date = mg_http_sreq_header(req, "x-amz-date");
  char akid[64], scope_region[32], signed_hdrs[256];
  if (!auth || !date ||
      sscanf(auth, "AWS4-HMAC-SHA256 Credential=%63[^/]/%*8s/%31[^/]/ec2/aws4_request, SignedHeaders=%255[^,]", akid,
             scope_region, signed_hdrs) != 3)
    return false;
  if (strcmp(akid, f->akid) != 0 || strcmp(scope_region, f->region) != 0) return false;
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  if (!strptime(date, "%Y%m%dT%H%M%SZ", &tm)) return false;
  mg_sigv4_header_t h[8];
  size_t nh = 0;
  for (char *save = NULL, *name = strtok_r(signed_hdrs, ";", &save); name && nh < 8;
       name = strtok_r(NULL, ";", &save)) {
    if (strcmp(name, "x-amz-date") == 0) continue;
    const char *v = mg_http_sreq_header(req, name);
    if (!v) return false;
    h[nh++] = (mg_sigv4_header_t){name, v};
  }
  char path[128], query[256];
  snprintf(path, sizeof path, "%.*s", (int)req->path.n, req->path.p);
  snprintf(query, sizeof query, "%.*s", (int)req->query.n, req->query.p);
  mg_sigv4_request_t sr = {.method = req->method, .url_path = path, .query = query, .headers = h, .nheaders = nh,
                           .payload = req->body.p, .payload_len = req->body.n, .region = f->region,
                           .service = "ec2", .unix_time = (int64_t)timegm(&tm)};
  mg_sigv4_creds_t c = {f->akid, f->secret, NULL};
  mg_sigv4_result_t res;
  if (mg_sigv4_sign(NULL, &sr, &c, 0, &res, NULL) != 0) return false;
  return strcmp(res.authorization, auth) == 0;
}

static void h_ec2(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  fake_t *f = ud;
  const char *ct = mg_http_sreq_header(req, "content-type");
  if (!ct || strncmp(ct, "application/x-www-form-urlencoded", 33) != 0) {
    ec2_error(resp, 400, "InvalidParameterValue", "Content-Type must be a form");
    return;
  }
  if (!mg_http_sreq_header(req, "authorization")) {
    ec2_error(resp, 401, "AuthFailure", "AWS was not able to validate the provided access credentials");
    return;
  }
  if (f->refuse_key) {
    f->refused++;
    ec2_error(resp, 401, "AuthFailure", "AWS was not able to validate the provided access credentials");
    return;
  }
  if (!signature_ok(f, req)) {
    f->bad_sig++;
    ec2_error(resp, 403, "SignatureDoesNotMatch", "The request signature we calculated does not match");
    return;
  }
  char action[64], version[32], token[64], max[16];
  form_get(req->body, "Action", action, sizeof action);
  form_get(req->body, "Version", version, sizeof version);
  if (strcmp(version, "2016-11-15") != 0) {
    ec2_error(resp, 400, "InvalidAction", "unknown version");
    return;
  }
  if (strcmp(action, "DescribeAvailabilityZones") == 0) {
    f->zones++;
    if (f->zones_fail) ec2_error(resp, 403, "UnauthorizedOperation", "You are not authorized to perform this operation.");
    else mg_buf_append_str(&resp->body, zones_xml);
    return;
  }
  if (strcmp(action, "DescribeInstances") != 0) {
    ec2_error(resp, 400, "InvalidAction", "The action is not valid for this web service.");
    return;
  }
  f->instances++;
  snprintf(f->form, sizeof f->form, "%.*s", (int)req->body.n, req->body.p);
  if (f->instances == 1) snprintf(f->first_form, sizeof f->first_form, "%s", f->form);
  if (f->fail_times > 0) {
    f->fail_times--;
    ec2_error(resp, f->fail_status, f->fail_code, f->fail_msg);
    return;
  }
  form_get(req->body, "MaxResults", max, sizeof max);
  form_get(req->body, "NextToken", token, sizeof token);
  size_t page = token[0] ? (size_t)atoi(token + 4) : 0;
  if (atoi(max) < 5 || atoi(max) > 1000 || page >= f->npages || (token[0] && strncmp(token, "tok-", 4) != 0)) {
    ec2_error(resp, 400, "InvalidParameterValue", "bad MaxResults or NextToken");
    return;
  }
  mg_http_sresp_header(resp, "Content-Type", "text/xml;charset=UTF-8");
  mg_buf_append_str(&resp->body, f->pages[page]);
}

static void h_imds_token(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  fake_t *f = ud;
  const char *ttl = mg_http_sreq_header(req, "x-aws-ec2-metadata-token-ttl-seconds");
  if (!ttl || atoi(ttl) < 1) {
    resp->status = 400;
    return;
  }
  f->imds_tokens++;
  mg_buf_append_str(&resp->body, "AQAEAImdsTokenForTests==");
}

static void h_imds_region(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  fake_t *f = ud;
  const char *tok = mg_http_sreq_header(req, "x-aws-ec2-metadata-token");
  if (!tok || strcmp(tok, "AQAEAImdsTokenForTests==") != 0) {
    resp->status = 401;
    return;
  }
  f->imds_regions++;
  mg_buf_append_str(&resp->body, f->region);
}

static void fake_start(uv_loop_t *loop, fake_t *f, const char *region) {
  memset(f, 0, sizeof *f);
  snprintf(f->region, sizeof f->region, "%s", region);
  f->akid = AKID;
  f->secret = SECRET;
  static const char *const two[] = {page1_xml, page2_xml};
  f->pages = two;
  f->npages = 2;
  int err = 0;
  f->srv = mg_http_server_new(loop, "127.0.0.1:0", NULL, &err);
  CHECK_INT(err, 0);
  if (!f->srv) abort();
  mg_http_server_route(f->srv, "POST", "/", h_ec2, f);
  mg_http_server_route(f->srv, "PUT", "/latest/api/token", h_imds_token, f);
  mg_http_server_route(f->srv, "GET", "/latest/meta-data/placement/region", h_imds_region, f);
  snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", mg_http_server_port(f->srv));
}

/* ------------------------------------------------------------ the provider */

typedef struct sink {
  int ok, failed;
  mg_sd_targets_t last; /* copy of the last good list */
} sink_t;

static void on_update(void *ud, bool ok, const mg_sd_targets_t *ts) {
  sink_t *s = ud;
  if (!ok) {
    CHECK(ts == NULL);
    s->failed++;
    return;
  }
  s->ok++;
  mg_sd_targets_cleanup(&s->last);
  for (size_t i = 0; i < ts->n; i++) {
    mg_conf_target_t *t = mg_sd_targets_add(&s->last, ts->v[i].address);
    for (size_t k = 0; t && k < ts->v[i].labels.n; k++)
      mg_kvs_add(&t->labels, ts->v[i].labels.v[k].name, ts->v[i].labels.v[k].value);
  }
}

static void put(mg_conf_val_t *map, const char *key, const char *value) {
  CHECK_INT(mg_conf_val_put(map, key, mg_conf_val_new(MG_CONF_VAL_SCALAR, value, 1)), 0);
}

/* A filter {name, values} appended to opts' filters list. */
static void add_filter(mg_conf_val_t *opts, const char *name, ...) {
  mg_conf_val_t *list = (mg_conf_val_t *)mg_conf_val_get(opts, "filters");
  if (!list) {
    list = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 1);
    mg_conf_val_put(opts, "filters", list);
  }
  mg_conf_val_t *f = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1), *vals = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 1);
  put(f, "name", name);
  va_list ap;
  va_start(ap, name);
  for (const char *v; (v = va_arg(ap, const char *)) != NULL;)
    mg_conf_val_push(vals, mg_conf_val_new(MG_CONF_VAL_SCALAR, v, 1));
  va_end(ap);
  mg_conf_val_put(f, "values", vals);
  mg_conf_val_push(list, f);
}

typedef struct rig {
  uv_loop_t loop;
  fake_t fake;
  mg_http_client_t *http;
  mg_conf_t *conf;
  mg_conf_sd_t *sd;
  sink_t sink;
  void *state;
} rig_t;

/* Loop, fake, client and a plan with one ec2 source with static keys
 * and the fake as endpoint; tests add options before rig_start. */
static void rig_init(rig_t *r, const char *region) {
  memset(r, 0, sizeof *r);
  tl_clean_env();
  tl_capture_logs();
  tl_secret(SECRET);
  uv_loop_init(&r->loop);
  fake_start(&r->loop, &r->fake, region ? region : "us-east-1");
  r->http = mg_http_client_new(&r->loop, NULL);
  r->conf = mg_conf_new("ec2.yml", MG_CONF_PROMYML);
  mg_conf_job_t *j = mg_conf_add_job(r->conf, "nodes");
  r->sd = mg_conf_job_add_sd(j, "ec2");
  if (region) put(r->sd->opts, "region", region);
  put(r->sd->opts, "endpoint", r->fake.url);
  put(r->sd->opts, "access_key", AKID);
  put(r->sd->opts, "secret_key", SECRET);
  put(r->sd->opts, "port", "9100");
}

static int rig_start(rig_t *r) {
  char why[400] = "";
  int rc = mg_sd_ec2_ops.check(r->sd, why, sizeof why);
  if (rc) fprintf(stderr, "  check: %s\n", why);
  mg_sd_env_t env = {.loop = &r->loop, .http = r->http, .conf = r->conf, .job = r->conf->jobs[0]};
  if (!rc) rc = mg_sd_ec2_ops.start(&env, r->sd, on_update, &r->sink, &r->state);
  CHECK(r->sink.ok + r->sink.failed == 0); /* never from inside start */
  return rc;
}

static void rig_free(rig_t *r) {
  if (r->state) mg_sd_ec2_ops.stop(r->state);
  r->state = NULL;
  mg_http_client_free(r->http);
  mg_http_server_free(r->fake.srv);
  for (int i = 0; i < 400 && uv_run(&r->loop, UV_RUN_NOWAIT); i++) usleep(5000);
  int rc = uv_loop_close(&r->loop);
  if (rc != 0) MG_FAIL_("uv_loop_close: %s (handles left open)", uv_err_name(rc));
  tl_check_no_secrets(NULL);
  mg_sd_targets_cleanup(&r->sink.last);
  mg_conf_free(r->conf);
  mg_log_set_stream(NULL);
  tl_rm_rf(tl_home);
}

typedef struct count_at_least {
  const int *v;
  int n;
} count_at_least_t;

static bool reached(void *ud) {
  count_at_least_t *c = ud;
  return *c->v >= c->n;
}

static bool wait_count(rig_t *r, const int *v, int n) {
  count_at_least_t c = {v, n};
  return tl_run_until(&r->loop, reached, &c, 10000, 2);
}

/* A target's labels as sorted "name=value" lines, address first. */
static void render_target(const mg_conf_target_t *t, mg_buf_t *out) {
  mg_buf_reset(out);
  mg_buf_printf(out, "%s\n", t->address);
  const mg_kv_t *done = NULL;
  for (size_t k = 0; k < t->labels.n; k++) {
    const mg_kv_t *next = NULL;
    for (size_t i = 0; i < t->labels.n; i++) {
      const mg_kv_t *c = &t->labels.v[i];
      if (done && strcmp(c->name, done->name) <= 0) continue;
      if (!next || strcmp(c->name, next->name) < 0) next = c;
    }
    if (!next) break;
    mg_buf_printf(out, "%s=%s\n", next->name, next->value);
    done = next;
  }
}

static const mg_conf_target_t *find_target(const sink_t *s, const char *address) {
  for (size_t i = 0; i < s->last.n; i++)
    if (strcmp(s->last.v[i].address, address) == 0) return &s->last.v[i];
  return NULL;
}

/* ------------------------------------------------------------ tests */

MG_TEST(ec2_labels_of_realistic_instances) {
  rig_t r;
  rig_init(&r, "us-east-1");
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 1));
  CHECK_INT(r.sink.failed, 0);
  CHECK_INT(r.fake.bad_sig, 0);
  CHECK_INT(r.fake.zones, 1);
  CHECK_INT(r.fake.instances, 2); /* two pages */
  CHECK_INT(r.sink.last.n, 3);    /* the stopped instance has no private IP */
  mg_buf_t b;
  mg_buf_init(&b, 0);
  const mg_conf_target_t *t = find_target(&r.sink, "10.0.0.157:9100");
  REQUIRE(t);
  render_target(t, &b);
  CHECK_STR(b.data, "10.0.0.157:9100\n"
                    "__meta_ec2_ami=ami-0abcdef1234567890\n"
                    "__meta_ec2_architecture=arm64\n"
                    "__meta_ec2_availability_zone=us-east-1a\n"
                    "__meta_ec2_availability_zone_id=use1-az6\n"
                    "__meta_ec2_instance_id=i-1234567890abcdef0\n"
                    "__meta_ec2_instance_lifecycle=spot\n"
                    "__meta_ec2_instance_state=running\n"
                    "__meta_ec2_instance_type=c6g.large\n"
                    "__meta_ec2_ipv6_addresses=,2001:db8::1,2001:db8::2,2001:db8:1::5,\n"
                    "__meta_ec2_owner_id=123456789012\n"
                    "__meta_ec2_primary_ipv6_addresses=,2001:db8::1,,2001:db8:1::5,\n"
                    "__meta_ec2_primary_subnet_id=subnet-aaaa\n"
                    "__meta_ec2_private_dns_name=ip-10-0-0-157.ec2.internal\n"
                    "__meta_ec2_private_ip=10.0.0.157\n"
                    "__meta_ec2_region=us-east-1\n"
                    "__meta_ec2_subnet_id=,subnet-aaaa,subnet-bbbb,\n"
                    "__meta_ec2_tag_Name=web-1\n"
                    "__meta_ec2_tag__n_code=yes\n"
                    "__meta_ec2_tag_aws_autoscaling_groupName=asg-web\n"
                    "__meta_ec2_tag_team_owner=payments & risk\n"
                    "__meta_ec2_vpc_id=vpc-1a2b3c4d\n");
  t = find_target(&r.sink, "172.31.5.6:9100");
  REQUIRE(t);
  render_target(t, &b);
  CHECK_STR(b.data, "172.31.5.6:9100\n"
                    "__meta_ec2_ami=ami-0win\n"
                    "__meta_ec2_architecture=x86_64\n"
                    "__meta_ec2_availability_zone=us-east-1b\n"
                    "__meta_ec2_availability_zone_id=use1-az1\n"
                    "__meta_ec2_instance_id=i-0win0000000000001\n"
                    "__meta_ec2_instance_state=running\n"
                    "__meta_ec2_instance_type=m5.xlarge\n"
                    "__meta_ec2_owner_id=210987654321\n"
                    "__meta_ec2_platform=windows\n"
                    "__meta_ec2_private_dns_name=ip-172-31-5-6.ec2.internal\n"
                    "__meta_ec2_private_ip=172.31.5.6\n"
                    "__meta_ec2_public_dns_name=ec2-54-12-34-56.compute-1.amazonaws.com\n"
                    "__meta_ec2_public_ip=54.12.34.56\n"
                    "__meta_ec2_region=us-east-1\n"
                    "__meta_ec2_tag_Name=<win>\n");
  /* Page 2: a zone DescribeAvailabilityZones did not list has no id; a
   * VPC instance without interfaces has an empty subnet list. */
  t = find_target(&r.sink, "10.0.9.9:9100");
  REQUIRE(t);
  render_target(t, &b);
  CHECK_STR(b.data, "10.0.9.9:9100\n"
                    "__meta_ec2_ami=ami-2\n"
                    "__meta_ec2_availability_zone=us-east-1z\n"
                    "__meta_ec2_instance_id=i-0page2\n"
                    "__meta_ec2_instance_state=pending\n"
                    "__meta_ec2_instance_type=t4g.nano\n"
                    "__meta_ec2_owner_id=123456789012\n"
                    "__meta_ec2_primary_subnet_id=subnet-9\n"
                    "__meta_ec2_private_ip=10.0.9.9\n"
                    "__meta_ec2_region=us-east-1\n"
                    "__meta_ec2_subnet_id=,,\n"
                    "__meta_ec2_vpc_id=vpc-9\n");
  mg_buf_cleanup(&b);
  rig_free(&r);
}

MG_TEST(ec2_pagination_and_filters_in_the_request) {
  rig_t r;
  rig_init(&r, "us-east-1");
  add_filter(r.sd->opts, "tag:Environment", "prod", "pre prod", NULL);
  add_filter(r.sd->opts, "instance-state-name", "running", NULL);
  put(r.sd->opts, "refresh_interval", "30ms");
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 2));
  CHECK_INT(r.fake.bad_sig, 0);
  CHECK_INT(r.fake.zones, 1); /* zone ids are asked for once */
  CHECK(r.fake.instances >= 4);
  CHECK_STR(r.fake.first_form, "Action=DescribeInstances&Version=2016-11-15&MaxResults=500"
                               "&Filter.1.Name=tag%3AEnvironment&Filter.1.Value.1=prod&Filter.1.Value.2=pre%20prod"
                               "&Filter.2.Name=instance-state-name&Filter.2.Value.1=running");
  /* The last request of a refresh asks for page 2 with the same filters. */
  CHECK(strstr(r.fake.form, "&Filter.2.Value.1=running&NextToken=tok-1") != NULL);
  CHECK_INT(r.sink.last.n, 3);
  /* A listing that ends empty reports an empty list (not a failure). */
  static const char *const none[] = {empty_page_xml};
  r.fake.pages = none;
  r.fake.npages = 1;
  int before = r.sink.ok;
  CHECK(wait_count(&r, &r.sink.ok, before + 2));
  CHECK_INT(r.sink.last.n, 0);
  CHECK_INT(r.sink.failed, 0);
  rig_free(&r);
}

MG_TEST(ec2_failures_keep_targets_and_log_once) {
  rig_t r;
  rig_init(&r, "us-east-1");
  put(r.sd->opts, "refresh_interval", "20ms");
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 1));
  /* Throttling, three times: three failed reports, one log line. */
  r.fake.fail_status = 503;
  r.fake.fail_code = "RequestLimitExceeded";
  r.fake.fail_msg = "Request limit exceeded.";
  r.fake.fail_times = 3;
  CHECK(wait_count(&r, &r.sink.failed, 3));
  int ok_before = r.sink.ok;
  CHECK(wait_count(&r, &r.sink.ok, ok_before + 1));
  CHECK_INT(tl_log_count("code=RequestLimitExceeded"), 1);
  CHECK_INT(tl_log_count("message=\"Request limit exceeded.\""), 1);
  CHECK_INT(tl_log_count("event=refresh_recovered"), 1);
  CHECK_INT(r.sink.last.n, 3); /* a failure never replaced the list */
  /* A different cause is logged anew; a 400 is an error. */
  r.fake.fail_status = 400;
  r.fake.fail_code = "InvalidParameterValue";
  r.fake.fail_msg = "The filter 'tag-key' is invalid";
  r.fake.fail_times = 2;
  int failed_before = r.sink.failed;
  CHECK(wait_count(&r, &r.sink.failed, failed_before + 2));
  CHECK_INT(tl_log_count("level=error mod=sd_ec2 event=refresh_failed"), 1);
  CHECK_INT(tl_log_count("code=InvalidParameterValue"), 1);
  /* A code that is not a word cannot break the log line. */
  r.fake.fail_status = 400;
  r.fake.fail_code = "Odd code=\"x\"";
  r.fake.fail_times = 1;
  failed_before = r.sink.failed;
  CHECK(wait_count(&r, &r.sink.failed, failed_before + 1));
  CHECK_INT(tl_log_count("code=Odd?code??x? message="), 1);
  /* The endpoint goes away: a network failure, logged once. */
  mg_http_server_free(r.fake.srv);
  r.fake.srv = NULL;
  failed_before = r.sink.failed;
  CHECK(wait_count(&r, &r.sink.failed, failed_before + 3));
  CHECK_INT(tl_log_count("err=ECONNREFUSED"), 1);
  CHECK_INT(r.sink.last.n, 3);
  mg_sd_ec2_ops.stop(r.state);
  r.state = NULL;
  mg_http_client_free(r.http);
  r.http = NULL;
  for (int i = 0; i < 400 && uv_run(&r.loop, UV_RUN_NOWAIT); i++) usleep(5000);
  CHECK_INT(uv_loop_close(&r.loop), 0);
  tl_check_no_secrets(NULL);
  mg_sd_targets_cleanup(&r.sink.last);
  mg_conf_free(r.conf);
  mg_log_set_stream(NULL);
  tl_rm_rf(tl_home);
}

static bool metric_at_least(const char *needle, int n) {
  mg_buf_t m;
  mg_buf_init(&m, 0);
  mg_metrics_render(&m);
  int count = 0;
  for (const char *p = m.data; p && (p = strstr(p, needle)) != NULL; p++) {
    const char *sp = strchr(p, ' ');
    if (sp && atof(sp + 1) >= n) count++;
  }
  mg_buf_cleanup(&m);
  return count > 0;
}

MG_TEST(ec2_credentials_refused_force_a_refresh_and_one_retry) {
  rig_t r;
  rig_init(&r, "us-east-1");
  put(r.sd->opts, "refresh_interval", "20ms");
  r.fake.refuse_key = true;
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.failed, 2));
  CHECK_INT(r.sink.ok, 0);
  /* Each refresh: the zones call is refused, retried once after a forced
   * credential refresh, refused again; the instances call then fails. */
  CHECK(r.fake.refused >= 6);
  CHECK_INT(tl_log_count("event=auth_retry"), r.sink.failed);
  CHECK_INT(tl_log_count("code=AuthFailure message="), 1); /* the failure itself, once */
  CHECK_INT(tl_log_count("access_key_id=AKID**** source=\"static configuration\""), 1);
  CHECK(metric_at_least("moongate_aws_credentials_refresh_total{credentials=\"ec2_sd/nodes\"", 2));
  r.fake.refuse_key = false;
  CHECK(wait_count(&r, &r.sink.ok, 1));
  CHECK_INT(r.sink.last.n, 3);
  rig_free(&r);
}

MG_TEST(ec2_zone_ids_are_optional) {
  rig_t r;
  rig_init(&r, "us-east-1");
  put(r.sd->opts, "refresh_interval", "20ms");
  r.fake.zones_fail = true;
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 2));
  CHECK_INT(r.sink.failed, 0);
  CHECK(r.fake.zones >= 2); /* asked again on the next refresh */
  mg_buf_t b;
  mg_buf_init(&b, 0);
  const mg_conf_target_t *t = find_target(&r.sink, "172.31.5.6:9100");
  REQUIRE(t);
  CHECK(mg_kvs_get(&t->labels, "__meta_ec2_availability_zone_id") == NULL);
  CHECK_STR(mg_kvs_get(&t->labels, "__meta_ec2_availability_zone"), "us-east-1b");
  r.fake.zones_fail = false;
  int before = r.sink.ok;
  CHECK(wait_count(&r, &r.sink.ok, before + 2));
  t = find_target(&r.sink, "172.31.5.6:9100");
  REQUIRE(t);
  CHECK_STR(mg_kvs_get(&t->labels, "__meta_ec2_availability_zone_id"), "use1-az1");
  mg_buf_cleanup(&b);
  rig_free(&r);
}

MG_TEST(ec2_region_from_imds) {
  rig_t r;
  rig_init(&r, NULL);
  unsetenv("AWS_EC2_METADATA_DISABLED");
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", r.fake.url, 1);
  snprintf(r.fake.region, sizeof r.fake.region, "eu-west-3");
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 1));
  CHECK_INT(r.fake.imds_tokens, 1);
  CHECK_INT(r.fake.imds_regions, 1);
  CHECK_INT(r.fake.bad_sig, 0); /* signed for eu-west-3 */
  const mg_conf_target_t *t = find_target(&r.sink, "10.0.0.157:9100");
  REQUIRE(t);
  CHECK_STR(mg_kvs_get(&t->labels, "__meta_ec2_region"), "eu-west-3");
  CHECK_INT(tl_log_count("event=region_from_imds"), 1);
  CHECK_INT(tl_log_count("AQAEAImdsTokenForTests"), 0);
  rig_free(&r);
}

MG_TEST(ec2_region_from_environment_and_imds_failure) {
  rig_t r;
  rig_init(&r, NULL);
  setenv("AWS_DEFAULT_REGION", "us-east-1", 1);
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.ok, 1));
  CHECK_INT(r.fake.imds_tokens, 0);
  rig_free(&r);
  /* No region anywhere and IMDS unreachable: a clear failure, retried. */
  rig_init(&r, NULL);
  unsetenv("AWS_EC2_METADATA_DISABLED");
  setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1", 1);
  put(r.sd->opts, "refresh_interval", "20ms");
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.failed, 2));
  CHECK_INT(tl_log_count("event=region_unknown"), 1);
  CHECK_INT(tl_log_count("hint=\"set region in ec2_sd_configs or AWS_REGION"), 1);
  CHECK_INT(r.fake.instances, 0);
  unsetenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
  rig_free(&r);
}

MG_TEST(ec2_unreadable_answers_fail) {
  rig_t r;
  rig_init(&r, "us-east-1");
  static const char *const junk[] = {"<html>proxy error</html>"};
  r.fake.pages = junk;
  r.fake.npages = 1;
  REQUIRE(rig_start(&r) == 0);
  CHECK(wait_count(&r, &r.sink.failed, 1));
  CHECK_INT(r.sink.ok, 0);
  CHECK_INT(tl_log_count("not a DescribeInstancesResponse"), 1);
  rig_free(&r);
}

MG_TEST(ec2_stop_in_flight_reports_nothing) {
  rig_t r;
  rig_init(&r, "us-east-1");
  REQUIRE(rig_start(&r) == 0);
  /* Let the first request leave, then stop before its answer is read. */
  uv_run(&r.loop, UV_RUN_NOWAIT);
  mg_sd_ec2_ops.stop(r.state);
  r.state = NULL;
  tl_run_for(&r.loop, 50);
  CHECK_INT(r.sink.ok + r.sink.failed, 0);
  rig_free(&r);
}

static void check_refused(const char *why_part, void (*edit)(mg_conf_val_t *opts)) {
  mg_conf_t *c = mg_conf_new("x.yml", MG_CONF_PROMYML);
  mg_conf_sd_t *sd = mg_conf_job_add_sd(mg_conf_add_job(c, "j"), "ec2");
  put(sd->opts, "region", "us-east-1");
  edit(sd->opts);
  char why[400] = "";
  CHECK_INT(mg_sd_ec2_ops.check(sd, why, sizeof why), MG_ECONFIG);
  if (!strstr(why, why_part)) MG_FAIL_("\"%s\" does not say \"%s\"", why, why_part);
  CHECK(!strstr(why, "s3cr3t-value"));
  mg_conf_free(c);
}

static void e_port(mg_conf_val_t *o) { put(o, "port", "99999"); }
static void e_port_text(mg_conf_val_t *o) { put(o, "port", "http"); }
static void e_refresh(mg_conf_val_t *o) { put(o, "refresh_interval", "soon"); }
static void e_half_keys(mg_conf_val_t *o) { put(o, "secret_key", "s3cr3t-value"); }
static void e_unknown(mg_conf_val_t *o) { put(o, "proxy_url", "http://proxy:3128"); }
static void e_filter_empty(mg_conf_val_t *o) { add_filter(o, "tag:Name", NULL); }
static void e_filter_noname(mg_conf_val_t *o) { add_filter(o, "", "x", NULL); }
static void e_endpoint(mg_conf_val_t *o) { put(o, "endpoint", "ec2.us-east-1.amazonaws.com"); }
static void e_region(mg_conf_val_t *o) { put(o, "region", "US East"); }
static void e_role(mg_conf_val_t *o) { put(o, "role_arn", "my-role"); }
static void e_filters_map(mg_conf_val_t *o) { put(o, "filters", "tag:Name=x"); }
static void e_tls(mg_conf_val_t *o) {
  mg_conf_val_t *t = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);
  put(t, "cert_file", "/c.pem");
  mg_conf_val_put(o, "tls_config", t);
}
static void e_bool(mg_conf_val_t *o) { put(o, "follow_redirects", "yes"); }
static void e_userinfo(mg_conf_val_t *o) { put(o, "endpoint", "https://me:s3cr3t-value@ec2.example/"); }

MG_TEST(ec2_check_options) {
  tl_clean_env();
  check_refused("port must be a number from 1 to 65535", e_port);
  check_refused("port must be a number", e_port_text);
  check_refused("refresh_interval must be a positive duration", e_refresh);
  check_refused("access_key and secret_key go together", e_half_keys);
  check_refused("unsupported field \"proxy_url\"", e_unknown);
  check_refused("filter \"tag:Name\": values cannot be empty", e_filter_empty);
  check_refused("a filter needs a name", e_filter_noname);
  check_refused("endpoint must be an http:// or https:// URL", e_endpoint);
  check_refused("is not a region name", e_region);
  check_refused("is not an ARN", e_role);
  check_refused("filters must be a list", e_filters_map);
  check_refused("cert_file and key_file go together", e_tls);
  check_refused("follow_redirects must be true or false", e_bool);
  check_refused("without user:password@", e_userinfo);
  /* No region anywhere, IMDS disabled: refused at load time. */
  mg_conf_t *c = mg_conf_new("x.yml", MG_CONF_PROMYML);
  mg_conf_sd_t *sd = mg_conf_job_add_sd(mg_conf_add_job(c, "j"), "ec2");
  char why[400] = "";
  CHECK_INT(mg_sd_ec2_ops.check(sd, why, sizeof why), MG_ECONFIG);
  CHECK(strstr(why, "no region") != NULL);
  setenv("AWS_REGION", "ap-southeast-2", 1);
  CHECK_INT(mg_sd_ec2_ops.check(sd, why, sizeof why), 0);
  /* A complete entry as prometheus.yml writes one. */
  put(sd->opts, "refresh_interval", "2m");
  put(sd->opts, "port", "9100");
  put(sd->opts, "profile", "prod");
  put(sd->opts, "role_arn", "arn:aws:iam::123456789012:role/prometheus");
  put(sd->opts, "enable_http2", "true");
  add_filter(sd->opts, "tag:Team", "payments", "risk", NULL);
  CHECK_INT(mg_sd_ec2_ops.check(sd, why, sizeof why), 0);
  CHECK(mg_sd_find("ec2") == &mg_sd_ec2_ops);
  mg_conf_free(c);
  tl_rm_rf(tl_home);
}

MG_TEST(ec2_page_parser_edges) {
  mg_sd_targets_t ts = {0};
  mg_kvs_t zones = {0};
  char *tok = NULL;
  mg_xml_error_t xe;
  CHECK_INT(mg_sd_ec2_parse_zones(zones_xml, strlen(zones_xml), &zones), 0);
  CHECK_INT(zones.n, 2);
  CHECK_STR(mg_kvs_get(&zones, "us-east-1b"), "use1-az1");
  mg_sd_ec2_page_opts_t o = {.region = "us-east-1", .port = 80, .zones = &zones};
  /* Tags whose names sanitize alike: the later one wins; an IPv6-only
   * private address is bracketed; an empty nextToken ends the listing. */
  const char *doc = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>"
                    "<instanceId>i-1</instanceId><privateIpAddress>fd00::1</privateIpAddress>"
                    "<tagSet><item><key>a.b</key><value>1</value></item><item><value>2</value><key>a-b</key></item>"
                    "<item><key>nokey-value</key></item></tagSet>"
                    "</item></instancesSet></item></reservationSet><nextToken></nextToken></DescribeInstancesResponse>";
  CHECK_INT(mg_sd_ec2_parse_instances(doc, strlen(doc), &o, &ts, &tok, &xe), 0);
  CHECK(tok == NULL);
  REQUIRE(ts.n == 1);
  CHECK_STR(ts.v[0].address, "[fd00::1]:80");
  CHECK_STR(mg_kvs_get(&ts.v[0].labels, "__meta_ec2_tag_a_b"), "2");
  CHECK(mg_kvs_get(&ts.v[0].labels, "__meta_ec2_tag_nokey_value") == NULL);
  CHECK(mg_kvs_get(&ts.v[0].labels, "__meta_ec2_owner_id") == NULL); /* no ownerId in the reservation */
  /* A private IP that is no address literal makes no target (fuzz_sd_ec2
   * found "[0.0.0.4" turning into the address "[0.0.0.4:80"). */
  const char *odd = "<DescribeInstancesResponse><reservationSet><item><instancesSet>"
                    "<item><instanceId>i-2</instanceId><privateIpAddress>[0.0.0.4</privateIpAddress></item>"
                    "<item><instanceId>i-3</instanceId><privateIpAddress>10.0.0.5]</privateIpAddress></item>"
                    "<item><instanceId>i-4</instanceId><privateIpAddress>ip-10-0-0-6</privateIpAddress></item>"
                    "<item><instanceId>i-5</instanceId><privateIpAddress>10.0.0.7</privateIpAddress></item>"
                    "</instancesSet></item></reservationSet></DescribeInstancesResponse>";
  mg_sd_targets_t ts_odd = {0};
  CHECK_INT(mg_sd_ec2_parse_instances(odd, strlen(odd), &o, &ts_odd, &tok, &xe), 0);
  REQUIRE(ts_odd.n == 1);
  CHECK_STR(ts_odd.v[0].address, "10.0.0.7:80");
  CHECK_STR(mg_kvs_get(&ts_odd.v[0].labels, "__meta_ec2_instance_id"), "i-5");
  mg_sd_targets_cleanup(&ts_odd);
  /* Past max_targets. */
  o.max_targets = 2;
  CHECK_INT(mg_sd_ec2_parse_instances(page1_xml, strlen(page1_xml), &o, &ts, &tok, &xe), MG_ETOOBIG);
  CHECK(tok == NULL);
  mg_sd_targets_cleanup(&ts);
  o.max_targets = 0;
  CHECK_INT(mg_sd_ec2_parse_instances(page1_xml, strlen(page1_xml), &o, &ts, &tok, &xe), 0);
  CHECK_STR(tok, "tok-1");
  CHECK_INT(ts.n, 2);
  mg_free(tok);
  /* Another document, or broken XML. */
  const char *err_doc = "<Response><Errors><Error><Code>AuthFailure</Code></Error></Errors></Response>";
  CHECK_INT(mg_sd_ec2_parse_instances(err_doc, strlen(err_doc), &o, &ts, &tok, &xe), MG_EPARSE);
  CHECK_INT(mg_sd_ec2_parse_instances("<DescribeInstancesResponse>", 27, &o, &ts, &tok, &xe), MG_EPARSE);
  CHECK(xe.msg != NULL && xe.line == 1);
  CHECK(tok == NULL);
  /* Out of memory at every allocation in turn: an error, never a crash
   * or a leak (ASan checks the latter). */
  for (uint64_t n = 1; n < 400; n++) {
    mg_sd_targets_t t2 = {0};
    mg_mem_fail_at(n);
    int rc = mg_sd_ec2_parse_instances(page1_xml, strlen(page1_xml), &o, &t2, &tok, &xe);
    mg_mem_fail_at(0);
    CHECK(rc == 0 || rc == MG_ENOMEM);
    mg_free(tok);
    tok = NULL;
    mg_sd_targets_cleanup(&t2);
  }
  mg_sd_targets_cleanup(&ts);
  mg_kvs_cleanup(&zones);
}

MG_TEST_MAIN()
