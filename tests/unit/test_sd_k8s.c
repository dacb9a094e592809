/* test_sd_k8s: the Kubernetes discovery provider against an in-process fake
 * API server (mg_http_server: lists, watches answered with the events since
 * the asked resourceVersion, 410 and error answers, token checks), and the
 * label sets Prometheus documents for each role. */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_http_server.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_sd_k8s.h"
#include "mg_test.h"

/* ------------------------------------------------------------ fake server */

#define MAX_OBJS 16
#define MAX_EVENTS 64

/* One collection (e.g. the pods of namespace a) of the fake API server. */
typedef struct fres {
  const char *path, *list_kind;
  char *name[MAX_OBJS], *json[MAX_OBJS];
  int nobjs;
  char *ev[MAX_EVENTS];
  unsigned ev_rv[MAX_EVENTS];
  int nev;
  int fail_status;   /* answer lists and watches with this status */
  bool expire_watch; /* answer the next watch with an ERROR 410 event */
  int lists, watches;
  unsigned last_watch_rv;
  char last_query[512], last_auth[256];
} fres_t;

typedef struct fake {
  mg_http_server_t *srv;
  int port;
  unsigned rv;
  const char *want_auth; /* NULL: anything goes */
  fres_t *res[12];
  int nres;
} fake_t;

static fake_t *the_fake;

/* The object with metadata.resourceVersion set to rv. */
static char *with_rv(const char *json, unsigned rv) {
  const char *m = strstr(json, "\"metadata\":{");
  size_t n = strlen(json) + 48;
  char *out = malloc(n);
  if (!m) {
    snprintf(out, n, "%s", json);
    return out;
  }
  size_t head = (size_t)(m - json) + 12;
  snprintf(out, n, "%.*s\"resourceVersion\":\"%u\",%s", (int)head, json, rv, json + head);
  return out;
}

static void fres_event(fres_t *f, const char *type, const char *obj) {
  if (f->nev == MAX_EVENTS) return;
  size_t n = strlen(obj) + 64;
  char *line = malloc(n);
  snprintf(line, n, "{\"type\":\"%s\",\"object\":%s}\n", type, obj);
  f->ev[f->nev] = line;
  f->ev_rv[f->nev++] = the_fake->rv;
}

static void fres_put(fres_t *f, const char *name, const char *json) {
  unsigned rv = ++the_fake->rv;
  int i = 0;
  while (i < f->nobjs && strcmp(f->name[i], name) != 0) i++;
  bool added = i == f->nobjs;
  if (added) {
    f->name[f->nobjs] = strdup(name);
    f->json[f->nobjs++] = NULL;
  }
  free(f->json[i]);
  f->json[i] = with_rv(json, rv);
  fres_event(f, added ? "ADDED" : "MODIFIED", f->json[i]);
}

static void fres_del(fres_t *f, const char *name) {
  for (int i = 0; i < f->nobjs; i++) {
    if (strcmp(f->name[i], name) != 0) continue;
    unsigned rv = ++the_fake->rv;
    char *gone = with_rv(f->json[i], rv);
    fres_event(f, "DELETED", gone);
    free(gone);
    free(f->name[i]);
    free(f->json[i]);
    f->name[i] = f->name[f->nobjs - 1];
    f->json[i] = f->json[f->nobjs - 1];
    f->nobjs--;
    return;
  }
}

/* A BOOKMARK: nothing changed up to a new resourceVersion. */
static void fres_bookmark(fres_t *f) {
  char obj[128];
  snprintf(obj, sizeof obj, "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"%u\"}}",
           ++the_fake->rv);
  fres_event(f, "BOOKMARK", obj);
}

static void fres_free(fres_t *f) {
  for (int i = 0; i < f->nobjs; i++) {
    free(f->name[i]);
    free(f->json[i]);
  }
  for (int i = 0; i < f->nev; i++) free(f->ev[i]);
  free(f);
}

/* A query parameter, URL-decoded (enough for the tests' values). */
static bool query_param(mg_str_t q, const char *name, char *out, size_t n) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < q.n;) {
    size_t end = i;
    while (end < q.n && q.p[end] != '&') end++;
    if (end - i > nl && memcmp(q.p + i, name, nl) == 0 && q.p[i + nl] == '=') {
      size_t o = 0;
      for (size_t j = i + nl + 1; j < end && o + 1 < n; j++) {
        if (q.p[j] == '%' && j + 2 < end) {
          char hex[3] = {q.p[j + 1], q.p[j + 2], 0};
          out[o++] = (char)strtol(hex, NULL, 16);
          j += 2;
        } else {
          out[o++] = q.p[j];
        }
      }
      out[o] = '\0';
      return true;
    }
    i = end + 1;
  }
  return false;
}

static void status_body(mg_http_sresp_t *resp, int code, const char *reason, const char *msg) {
  resp->status = code;
  mg_buf_printf(&resp->body,
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"%s\","
                "\"reason\":\"%s\",\"code\":%d}",
                msg, reason, code);
}

static void h_res(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  fres_t *f = ud;
  const char *auth = mg_http_sreq_header(req, "authorization");
  snprintf(f->last_auth, sizeof f->last_auth, "%s", auth ? auth : "");
  if (the_fake->want_auth && (!auth || strcmp(auth, the_fake->want_auth) != 0)) {
    status_body(resp, 401, "Unauthorized", "Unauthorized");
    return;
  }
  char v[64];
  bool watch = query_param(req->query, "watch", v, sizeof v) && strcmp(v, "1") == 0;
  if (!watch) snprintf(f->last_query, sizeof f->last_query, "%.*s", (int)req->query.n, req->query.p);
  if (watch) f->watches++;
  else f->lists++;
  if (f->fail_status) {
    status_body(resp, f->fail_status, "InternalError", "the fake says no");
    return;
  }
  if (!watch) {
    mg_buf_printf(&resp->body, "{\"kind\":\"%s\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"%u\"},"
                  "\"items\":[", f->list_kind, the_fake->rv);
    for (int i = 0; i < f->nobjs; i++) mg_buf_printf(&resp->body, "%s%s", i ? "," : "", f->json[i]);
    mg_buf_append_str(&resp->body, "]}");
    return;
  }
  if (f->expire_watch) {
    f->expire_watch = false;
    mg_buf_append_str(&resp->body, "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\","
                                   "\"metadata\":{},\"status\":\"Failure\",\"message\":\"too old resource version\","
                                   "\"reason\":\"Expired\",\"code\":410}}\n");
    return;
  }
  unsigned from = query_param(req->query, "resourceVersion", v, sizeof v) ? (unsigned)strtoul(v, NULL, 10) : 0;
  f->last_watch_rv = from;
  for (int i = 0; i < f->nev; i++)
    if (f->ev_rv[i] > from) mg_buf_append_str(&resp->body, f->ev[i]);
}

static fres_t *fake_res(fake_t *fk, const char *path, const char *list_kind) {
  fres_t *f = calloc(1, sizeof *f);
  f->path = path;
  f->list_kind = list_kind;
  fk->res[fk->nres++] = f;
  CHECK_INT(mg_http_server_route(fk->srv, "GET", path, h_res, f), 0);
  return f;
}

static void fake_start(fake_t *fk, uv_loop_t *loop) {
  memset(fk, 0, sizeof *fk);
  the_fake = fk;
  int err = 0;
  fk->srv = mg_http_server_new(loop, "127.0.0.1:0", &(mg_http_server_opts_t){.max_connections = 64}, &err);
  REQUIRE(fk->srv);
  fk->port = mg_http_server_port(fk->srv);
}

static void fake_stop(fake_t *fk) {
  mg_http_server_free(fk->srv);
  for (int i = 0; i < fk->nres; i++) fres_free(fk->res[i]);
}

/* ------------------------------------------------------- provider harness */

typedef struct sink {
  int updates, failures;
  mg_sd_targets_t last;
} sink_t;

static void on_update(void *ud, bool ok, const mg_sd_targets_t *ts) {
  sink_t *s = ud;
  if (!ok) {
    CHECK(ts == NULL);
    s->failures++;
    return;
  }
  s->updates++;
  mg_sd_targets_cleanup(&s->last);
  for (size_t i = 0; i < ts->n; i++) {
    mg_conf_target_t *t = mg_sd_targets_add(&s->last, ts->v[i].address);
    for (size_t j = 0; j < ts->v[i].labels.n; j++)
      mg_kvs_add(&t->labels, ts->v[i].labels.v[j].name, ts->v[i].labels.v[j].value);
  }
}

typedef struct harness {
  uv_loop_t loop;
  mg_http_client_t *http;
  fake_t fake;
  mg_conf_job_t job;
  mg_sd_env_t env;
  mg_conf_sd_t sd;
  sink_t sink;
  void *state;
  char url[64];
} harness_t;

static void tick(uv_timer_t *t) { (void)t; }

typedef bool (*cond_fn)(harness_t *h, const void *arg);

/* Run the loop until cond holds or ms pass; returns whether it held. */
static bool run_until(harness_t *h, cond_fn cond, const void *arg, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&h->loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uv_update_time(&h->loop);
  uint64_t start = uv_now(&h->loop);
  bool ok;
  while (!(ok = cond(h, arg)) && uv_now(&h->loop) - start < ms) uv_run(&h->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&h->loop, UV_RUN_NOWAIT);
  return ok;
}

static bool updates_at_least(harness_t *h, const void *arg) { return h->sink.updates >= *(const int *)arg; }
static bool failures_at_least(harness_t *h, const void *arg) { return h->sink.failures >= *(const int *)arg; }
static bool ntargets_is(harness_t *h, const void *arg) {
  return h->sink.updates > 0 && h->sink.last.n == *(const size_t *)arg;
}

static void h_init(harness_t *h) {
  memset(h, 0, sizeof *h);
  uv_loop_init(&h->loop);
  h->http = mg_http_client_new(&h->loop, NULL);
  fake_start(&h->fake, &h->loop);
  h->job.name = "k8s";
  h->env = (mg_sd_env_t){&h->loop, h->http, NULL, &h->job, NULL};
  h->sd.kind = "kubernetes";
  h->sd.opts = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);
  snprintf(h->url, sizeof h->url, "http://127.0.0.1:%d", h->fake.port);
}

static int h_start(harness_t *h) {
  return mg_sd_kubernetes_ops.start(&h->env, &h->sd, on_update, &h->sink, &h->state);
}

static void h_finish(harness_t *h) {
  mg_sd_kubernetes_ops.stop(h->state);
  mg_http_client_free(h->http);
  fake_stop(&h->fake);
  uv_run(&h->loop, UV_RUN_DEFAULT);
  CHECK_INT(uv_loop_close(&h->loop), 0);
  mg_conf_val_free(h->sd.opts);
  mg_sd_targets_cleanup(&h->sink.last);
}

/* Option trees as a loader builds them. */
static mg_conf_val_t *opt(mg_conf_val_t *map, const char *key, const char *scalar) {
  mg_conf_val_t *v = mg_conf_val_new(scalar ? MG_CONF_VAL_SCALAR : MG_CONF_VAL_MAP, scalar, 1);
  CHECK_INT(mg_conf_val_put(map, key, v), 0);
  return v;
}
static mg_conf_val_t *opt_list(mg_conf_val_t *map, const char *key) {
  mg_conf_val_t *v = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 1);
  CHECK_INT(mg_conf_val_put(map, key, v), 0);
  return v;
}
static mg_conf_val_t *push(mg_conf_val_t *list, const char *scalar) {
  mg_conf_val_t *v = mg_conf_val_new(scalar ? MG_CONF_VAL_SCALAR : MG_CONF_VAL_MAP, scalar, 1);
  CHECK_INT(mg_conf_val_push(list, v), 0);
  return v;
}

static const mg_conf_target_t *find_target(const sink_t *s, const char *address) {
  for (size_t i = 0; i < s->last.n; i++)
    if (strcmp(s->last.v[i].address, address) == 0) return &s->last.v[i];
  return NULL;
}

static const char *label(const mg_conf_target_t *t, const char *name) {
  return t ? mg_kvs_get(&t->labels, name) : NULL;
}

/* Exactly these labels (name=value pairs, NULL-terminated), nothing else. */
static void check_labels(const mg_conf_target_t *t, const char *const *want) {
  REQUIRE(t);
  size_t n = 0, distinct = 0;
  for (; want[n]; n++) {
    bool again = false;
    for (size_t j = 0; j < n && !again; j++) again = strcmp(want[j], want[n]) == 0;
    distinct += !again;
    const char *eq = strchr(want[n], '=');
    char name[160];
    snprintf(name, sizeof name, "%.*s", (int)(eq - want[n]), want[n]);
    const char *got = mg_kvs_get(&t->labels, name);
    if (!got || strcmp(got, eq + 1) != 0)
      MG_FAIL_("label %s: got \"%s\", want \"%s\"", name, got ? got : "(none)", eq + 1);
  }
  if (t->labels.n != distinct) {
    MG_FAIL_("target %s has %zu labels, want %zu:", t->address, t->labels.n, distinct);
    for (size_t i = 0; i < t->labels.n; i++) fprintf(stderr, "    %s=%s\n", t->labels.v[i].name, t->labels.v[i].value);
  }
}

/* ------------------------------------------------------------ objects */

static const char POD_WEB[] =
    "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"web-7d4b9c-x2x9z\",\"namespace\":\"shop\","
    "\"uid\":\"1f2e3d4c-0000-4000-8000-000000000001\",\"labels\":{\"app.kubernetes.io/name\":\"web\","
    "\"pod-template-hash\":\"7d4b9c\"},\"annotations\":{\"prometheus.io/scrape\":\"true\",\"prometheus.io/port\":"
    "\"9100\"},\"ownerReferences\":[{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"name\":\"n0\"},{\"apiVersion\":"
    "\"apps/v1\",\"kind\":\"ReplicaSet\",\"name\":\"web-7d4b9c\",\"uid\":\"u\",\"controller\":true,"
    "\"blockOwnerDeletion\":true}],\"managedFields\":[{\"manager\":\"kubelet\",\"fieldsV1\":{\"f:status\":{}}}]},"
    "\"spec\":{\"nodeName\":\"node-a\",\"containers\":[{\"name\":\"app\",\"image\":\"shop/web:1.2\",\"ports\":["
    "{\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"TCP\"},{\"name\":\"metrics\",\"containerPort\":9100,"
    "\"protocol\":\"TCP\"}],\"env\":[{\"name\":\"A\",\"value\":\"\\u00e9\"}]},{\"name\":\"sidecar\",\"image\":"
    "\"envoy:1\"}],\"initContainers\":[{\"name\":\"migrate\",\"image\":\"shop/migrate:1\",\"ports\":[{"
    "\"containerPort\":7000,\"protocol\":\"UDP\"}]}]},\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.0.0.5\","
    "\"podIP\":\"10.1.2.3\",\"podIPs\":[{\"ip\":\"10.1.2.3\"},{\"ip\":\"fd00::3\"}],\"conditions\":[{\"type\":"
    "\"Initialized\",\"status\":\"True\"},{\"type\":\"Ready\",\"status\":\"True\"}],\"containerStatuses\":[{"
    "\"name\":\"sidecar\",\"containerID\":\"containerd://bbb\"},{\"name\":\"app\",\"containerID\":"
    "\"containerd://aaa\"}],\"initContainerStatuses\":[{\"name\":\"migrate\",\"containerID\":\"containerd://ccc\"}]}}";

static const char POD_PENDING[] =
    "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"pending\",\"namespace\":\"shop\",\"uid\":\"u2\"},\"spec\":{"
    "\"containers\":[{\"name\":\"c\",\"image\":\"i\",\"ports\":[{\"containerPort\":80}]}]},\"status\":{\"phase\":"
    "\"Pending\"}}";

static char *pod_json(const char *name, const char *ip, const char *labelv) {
  char *out = malloc(1024);
  snprintf(out, 1024,
           "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"%s\",\"namespace\":\"default\",\"uid\":\"u-%s\",\"labels\":{"
           "\"v\":\"%s\"}},\"spec\":{\"nodeName\":\"node-a\",\"containers\":[{\"name\":\"c\",\"image\":\"i\","
           "\"ports\":[{\"name\":\"m\",\"containerPort\":9100,\"protocol\":\"TCP\"}]}]},\"status\":{\"phase\":"
           "\"Running\",\"podIP\":\"%s\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"False\"}]}}",
           name, name, labelv, ip);
  return out;
}

static const char NODE_A[] =
    "{\"kind\":\"Node\",\"metadata\":{\"name\":\"node-a\",\"uid\":\"n1\",\"labels\":{\"topology.kubernetes.io/zone\":"
    "\"eu-west-1a\",\"kubernetes.io/os\":\"linux\"},\"annotations\":{\"node.alpha.kubernetes.io/ttl\":\"0\"}},"
    "\"spec\":{\"providerID\":\"aws:///eu-west-1a/i-0abc\"},\"status\":{\"addresses\":[{\"type\":\"Hostname\","
    "\"address\":\"ip-10-0-0-5\"},{\"type\":\"InternalIP\",\"address\":\"10.0.0.5\"},{\"type\":\"InternalIP\","
    "\"address\":\"10.0.0.6\"},{\"type\":\"ExternalIP\",\"address\":\"3.3.3.3\"}],\"daemonEndpoints\":{"
    "\"kubeletEndpoint\":{\"Port\":10250}},\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}";

static const char SVC_WEB[] =
    "{\"kind\":\"Service\",\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\",\"labels\":{\"app\":\"web\"},"
    "\"annotations\":{\"prometheus.io/probe\":\"true\"}},\"spec\":{\"type\":\"LoadBalancer\",\"clusterIP\":"
    "\"10.96.0.10\",\"loadBalancerIP\":\"1.2.3.4\",\"ports\":[{\"name\":\"http\",\"port\":80,\"targetPort\":8080,"
    "\"protocol\":\"TCP\"},{\"name\":\"metrics\",\"port\":9100,\"protocol\":\"TCP\"}]}}";

static const char SVC_EXT[] =
    "{\"kind\":\"Service\",\"metadata\":{\"name\":\"db\",\"namespace\":\"shop\"},\"spec\":{\"type\":\"ExternalName\","
    "\"externalName\":\"db.example.com\",\"ports\":[{\"port\":5432,\"protocol\":\"TCP\"}]}}";

static const char EPS_WEB[] =
    "{\"kind\":\"Endpoints\",\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\",\"labels\":{\"app\":\"web\"}},"
    "\"subsets\":[{\"addresses\":[{\"ip\":\"10.1.2.3\",\"nodeName\":\"node-a\",\"targetRef\":{\"kind\":\"Pod\","
    "\"namespace\":\"shop\",\"name\":\"web-7d4b9c-x2x9z\",\"uid\":\"u\"}}],\"notReadyAddresses\":[{\"ip\":"
    "\"10.1.9.9\",\"hostname\":\"h9\"}],\"ports\":[{\"name\":\"http\",\"port\":8080,\"protocol\":\"TCP\"}]}]}";

static const char SLICE_WEB[] =
    "{\"kind\":\"EndpointSlice\",\"apiVersion\":\"discovery.k8s.io/v1\",\"metadata\":{\"name\":\"web-abcde\","
    "\"namespace\":\"shop\",\"labels\":{\"kubernetes.io/service-name\":\"web\",\"endpointslice.kubernetes.io/"
    "managed-by\":\"endpointslice-controller.k8s.io\"}},\"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":["
    "\"10.1.2.3\"],\"conditions\":{\"ready\":true,\"serving\":true,\"terminating\":false},\"nodeName\":\"node-a\","
    "\"zone\":\"eu-west-1a\",\"targetRef\":{\"kind\":\"Pod\",\"namespace\":\"shop\",\"name\":\"web-7d4b9c-x2x9z\"}},"
    "{\"addresses\":[\"10.1.9.9\"],\"conditions\":{\"ready\":false},\"hostname\":\"h9\",\"deprecatedTopology\":{"
    "\"kubernetes.io/hostname\":\"node-b\"}}],\"ports\":[{\"name\":\"http\",\"port\":8080,\"protocol\":\"TCP\","
    "\"appProtocol\":\"http\"}]}";

/* The pod role's labels shared by every target of POD_WEB. */
#define POD_WEB_LABELS                                                                                              \
  "__meta_kubernetes_namespace=shop", "__meta_kubernetes_pod_name=web-7d4b9c-x2x9z",                                \
      "__meta_kubernetes_pod_ip=10.1.2.3", "__meta_kubernetes_pod_ipv4=10.1.2.3",                                   \
      "__meta_kubernetes_pod_ipv6=fd00::3", "__meta_kubernetes_pod_ready=true",                                     \
      "__meta_kubernetes_pod_phase=Running", "__meta_kubernetes_pod_node_name=node-a",                              \
      "__meta_kubernetes_pod_host_ip=10.0.0.5", "__meta_kubernetes_pod_uid=1f2e3d4c-0000-4000-8000-000000000001",   \
      "__meta_kubernetes_pod_controller_kind=ReplicaSet", "__meta_kubernetes_pod_controller_name=web-7d4b9c",       \
      "__meta_kubernetes_pod_label_app_kubernetes_io_name=web",                                                     \
      "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name=true",                                             \
      "__meta_kubernetes_pod_label_pod_template_hash=7d4b9c",                                                       \
      "__meta_kubernetes_pod_labelpresent_pod_template_hash=true",                                                  \
      "__meta_kubernetes_pod_annotation_prometheus_io_scrape=true",                                                 \
      "__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape=true",                                          \
      "__meta_kubernetes_pod_annotation_prometheus_io_port=9100",                                                   \
      "__meta_kubernetes_pod_annotationpresent_prometheus_io_port=true"

/* ------------------------------------------------------------- tests */

static int check_opts(mg_conf_val_t *opts, char *why, size_t n) {
  mg_conf_sd_t sd = {.kind = "kubernetes", .opts = opts, .lua_ref = -1};
  why[0] = '\0';
  int rc = mg_sd_kubernetes_ops.check(&sd, why, n);
  mg_conf_val_free(opts);
  return rc;
}

static void two_pod_selectors(mg_conf_val_t *list) {
  opt(push(list, NULL), "role", "pod");
  opt(push(list, NULL), "role", "pod");
}

#define CHECK_REFUSED(build, fragment)                                                                              \
  do {                                                                                                              \
    mg_conf_val_t *o_ = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);                                                  \
    build;                                                                                                          \
    char why_[400];                                                                                                 \
    CHECK_INT(check_opts(o_, why_, sizeof why_), MG_ECONFIG);                                                       \
    if (!strstr(why_, fragment)) MG_FAIL_("why \"%s\" lacks \"%s\"", why_, fragment);                              \
  } while (0)

MG_TEST(check_refuses_what_it_cannot_do) {
  CHECK_REFUSED((void)0, "role is required");
  CHECK_REFUSED(opt(o_, "role", "pods"), "unknown role \"pods\"");
  CHECK_REFUSED(opt(o_, "role", "ingress"), "ingress is not supported");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "kubeconfig_file", "/k")), "kubeconfig_file is not supported");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "oauth2", NULL)), "oauth2 is not supported");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "api_servers", "x")), "unknown field api_servers");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "api_server", "ftp://x")), "http:// or https://");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "bearer_token", "s3cr3t")), "need api_server");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "api_server", "https://k"), opt(o_, "bearer_token", "a"),
                 opt(o_, "bearer_token_file", "b")),
                "at most one of");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "api_server", "https://k"),
                 opt(opt(o_, "namespaces", NULL), "own_namespace", "true")),
                "own_namespace works in the cluster only");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(opt(o_, "attach_metadata", NULL), "namespace", "true")),
                "attach_metadata.namespace is not supported");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(opt(o_, "attach_metadata", NULL), "node", "yes")), "true or false");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(push(opt_list(o_, "selectors"), NULL), "role", "service")),
                "role pod does not take service selectors");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(push(opt_list(o_, "selectors"), NULL), "role", "node")),
                "need attach_metadata.node");
  CHECK_REFUSED((opt(o_, "role", "endpoints"), two_pod_selectors(opt_list(o_, "selectors"))),
                "duplicated selector role pod");
  CHECK_REFUSED((opt(o_, "role", "pod"), opt(o_, "api_server", "https://k"),
                 opt(opt(o_, "tls_config", NULL), "cert_file", "c.pem")),
                "both cert_file and key_file");

  /* Everything Prometheus users write for a pod job passes; the secret
   * never shows in messages. */
  mg_conf_val_t *o = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);
  opt(o, "role", "endpointslice");
  opt(o, "api_server", "https://k8s.example:6443/");
  opt(o, "bearer_token_file", "/var/run/token");
  mg_conf_val_t *tls = opt(o, "tls_config", NULL);
  opt(tls, "ca_file", "ca.pem");
  opt(tls, "insecure_skip_verify", "false");
  mg_conf_val_t *names = opt_list(opt(o, "namespaces", NULL), "names");
  push(names, "a");
  push(names, "b");
  mg_conf_val_t *sel = opt_list(o, "selectors");
  opt(push(sel, NULL), "role", "endpointslice");
  mg_conf_val_t *ps = push(sel, NULL);
  opt(ps, "role", "pod");
  opt(ps, "label", "app=web");
  opt(opt(o, "attach_metadata", NULL), "node", "true");
  opt(o, "follow_redirects", "true");
  char why[400];
  CHECK_INT(check_opts(o, why, sizeof why), 0);
}

MG_TEST(pod_role_targets_and_labels) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  fres_put(pods, "web", POD_WEB);
  fres_put(pods, "pending", POD_PENDING);
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  size_t want = 4; /* app:8080, app:9100, sidecar (no port), migrate:7000 (init); the pending pod has no IP */
  CHECK(run_until(&h, ntargets_is, &want, 5000));
  CHECK_INT(h.sink.updates, 1);
  CHECK_INT(h.sink.failures, 0);

  static const char *const app_metrics[] = {POD_WEB_LABELS,
                                            "__meta_kubernetes_pod_container_name=app",
                                            "__meta_kubernetes_pod_container_id=containerd://aaa",
                                            "__meta_kubernetes_pod_container_image=shop/web:1.2",
                                            "__meta_kubernetes_pod_container_init=false",
                                            "__meta_kubernetes_pod_container_port_name=metrics",
                                            "__meta_kubernetes_pod_container_port_number=9100",
                                            "__meta_kubernetes_pod_container_port_protocol=TCP",
                                            NULL};
  check_labels(find_target(&h.sink, "10.1.2.3:9100"), app_metrics);
  static const char *const sidecar[] = {POD_WEB_LABELS,
                                        "__meta_kubernetes_pod_container_name=sidecar",
                                        "__meta_kubernetes_pod_container_id=containerd://bbb",
                                        "__meta_kubernetes_pod_container_image=envoy:1",
                                        "__meta_kubernetes_pod_container_init=false",
                                        NULL};
  check_labels(find_target(&h.sink, "10.1.2.3"), sidecar);
  const mg_conf_target_t *init = find_target(&h.sink, "10.1.2.3:7000");
  CHECK_STR(label(init, "__meta_kubernetes_pod_container_init"), "true");
  CHECK_STR(label(init, "__meta_kubernetes_pod_container_id"), "containerd://ccc");
  CHECK_STR(label(init, "__meta_kubernetes_pod_container_port_name"), "");
  CHECK_STR(label(init, "__meta_kubernetes_pod_container_port_protocol"), "UDP");
  CHECK(find_target(&h.sink, "10.1.2.3:8080") != NULL);
  CHECK_STR(pods->last_query, "");
  CHECK_STR(pods->last_auth, "");
  h_finish(&h);
}

MG_TEST(namespaces_and_selectors_reach_the_api) {
  harness_t h;
  h_init(&h);
  fres_t *a = fake_res(&h.fake, "/api/v1/namespaces/a/pods", "PodList");
  fres_t *b = fake_res(&h.fake, "/api/v1/namespaces/b/pods", "PodList");
  char *pa = pod_json("pa", "10.0.1.1", "x"), *pb = pod_json("pb", "10.0.2.1", "y");
  fres_put(a, "pa", pa);
  fres_put(b, "pb", pb);
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  mg_conf_val_t *names = opt_list(opt(h.sd.opts, "namespaces", NULL), "names");
  push(names, "a");
  push(names, "b");
  push(names, "a"); /* a repeated name is watched once */
  mg_conf_val_t *s = push(opt_list(h.sd.opts, "selectors"), NULL);
  opt(s, "role", "pod");
  opt(s, "label", "app in (web,api),tier!=db");
  opt(s, "field", "status.phase=Running");
  REQUIRE(h_start(&h) == 0);
  size_t want = 2;
  CHECK(run_until(&h, ntargets_is, &want, 5000));
  CHECK(find_target(&h.sink, "10.0.1.1:9100") != NULL);
  CHECK(find_target(&h.sink, "10.0.2.1:9100") != NULL);
  CHECK_STR(label(find_target(&h.sink, "10.0.2.1:9100"), "__meta_kubernetes_pod_ready"), "false");
  CHECK_STR(a->last_query,
            "labelSelector=app%20in%20%28web%2Capi%29%2Ctier%21%3Ddb&fieldSelector=status.phase%3DRunning");
  CHECK_STR(b->last_query, a->last_query);
  CHECK_INT(a->lists, 1);
  CHECK_INT(b->lists, 1);
  free(pa);
  free(pb);
  h_finish(&h);
}

static bool label_is(harness_t *h, const void *arg) {
  const char *const *p = arg; /* address, label, value */
  const mg_conf_target_t *t = find_target(&h->sink, p[0]);
  const char *v = label(t, p[1]);
  return v && strcmp(v, p[2]) == 0;
}

static bool target_gone(harness_t *h, const void *arg) {
  return h->sink.updates > 0 && !find_target(&h->sink, arg);
}

static bool lists_at_least(harness_t *h, const void *arg) {
  const struct {
    fres_t *f;
    int n;
  } *w = arg;
  return w->f->lists >= w->n;
}

static bool watch_from(harness_t *h, const void *arg) {
  const struct {
    fres_t *f;
    unsigned rv;
  } *w = arg;
  return w->f->last_watch_rv == w->rv;
}

MG_TEST(watch_adds_modifies_deletes_and_relists_on_410) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  char *p1 = pod_json("p1", "10.0.0.1", "one");
  fres_put(pods, "p1", p1);
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  size_t one = 1, two = 2;
  CHECK(run_until(&h, ntargets_is, &one, 5000));

  char *p2 = pod_json("p2", "10.0.0.2", "two");
  fres_put(pods, "p2", p2); /* ADDED */
  CHECK(run_until(&h, ntargets_is, &two, 5000));
  char *p1b = pod_json("p1", "10.0.0.1", "changed");
  fres_put(pods, "p1", p1b); /* MODIFIED */
  const char *const changed[] = {"10.0.0.1:9100", "__meta_kubernetes_pod_label_v", "changed"};
  CHECK(run_until(&h, label_is, changed, 5000));
  fres_del(pods, "p2"); /* DELETED */
  CHECK(run_until(&h, target_gone, "10.0.0.2:9100", 5000));
  fres_bookmark(pods); /* the next watch starts from the bookmark */
  unsigned bookmark = h.fake.rv;
  struct {
    fres_t *f;
    unsigned rv;
  } bw = {pods, bookmark};
  CHECK(run_until(&h, watch_from, &bw, 5000));
  CHECK_INT(h.sink.last.n, 1);
  CHECK(pods->watches >= 3);
  CHECK_INT(pods->lists, 1);

  /* The watch's resourceVersion expired: list again, and what changed in
   * between (p3 added without a watch event the provider sees) arrives. */
  int updates = h.sink.updates;
  pods->expire_watch = true;
  char *p3 = pod_json("p3", "10.0.0.3", "three");
  unsigned keep = pods->nev;
  fres_put(pods, "p3", p3);
  free(pods->ev[keep]); /* drop the event: only a relist can find p3 */
  pods->nev = (int)keep;
  struct {
    fres_t *f;
    int n;
  } w = {pods, 2};
  CHECK(run_until(&h, lists_at_least, &w, 5000));
  CHECK(run_until(&h, ntargets_is, &two, 5000));
  CHECK(find_target(&h.sink, "10.0.0.3:9100") != NULL);
  CHECK(h.sink.updates > updates);
  CHECK_INT(h.sink.failures, 0);
  free(p1);
  free(p1b);
  free(p2);
  free(p3);
  h_finish(&h);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  fputs(text, f);
  fclose(f);
}

MG_TEST(bearer_token_file_is_sent_and_read_again) {
  harness_t h;
  h_init(&h);
  char dir[] = "/tmp/mg_k8s_tokXXXXXX", path[64];
  REQUIRE(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/token", dir);
  write_file(path, "tok-one\n");
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  char *p1 = pod_json("p1", "10.0.0.1", "one");
  fres_put(pods, "p1", p1);
  h.fake.want_auth = "Bearer tok-one";
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  opt(h.sd.opts, "bearer_token_file", path);
  FILE *logf = tmpfile();
  mg_log_set_stream(logf);
  REQUIRE(h_start(&h) == 0);
  size_t one = 1;
  CHECK(run_until(&h, ntargets_is, &one, 5000));
  CHECK_STR(pods->last_auth, "Bearer tok-one");

  /* The token rotates: the server refuses the old one, the provider reads
   * the file again at the 401 and goes on with the new token. */
  write_file(path, "tok-two");
  h.fake.want_auth = "Bearer tok-two";
  struct {
    fres_t *f;
    int n;
  } w = {pods, 2};
  CHECK(run_until(&h, lists_at_least, &w, 8000));
  CHECK_STR(pods->last_auth, "Bearer tok-two");
  CHECK_INT(h.sink.failures, 0); /* the watch's 401 led to a relist with the new token */
  CHECK_INT(h.sink.last.n, 1);

  /* Logs name the file and the status, never a token. */
  mg_log_set_stream(NULL);
  fflush(logf);
  rewind(logf);
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf - 1, logf);
  buf[n] = '\0';
  fclose(logf);
  CHECK(strstr(buf, "HTTP 401") != NULL);
  CHECK(strstr(buf, "tok-one") == NULL);
  CHECK(strstr(buf, "tok-two") == NULL);
  unlink(path);
  rmdir(dir);
  free(p1);
  h_finish(&h);
}

MG_TEST(errors_keep_the_previous_targets) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  char *p1 = pod_json("p1", "10.0.0.1", "one");
  fres_put(pods, "p1", p1);
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  mg_log_set_level(MG_LOG_ERROR);
  REQUIRE(h_start(&h) == 0);
  size_t one = 1;
  CHECK(run_until(&h, ntargets_is, &one, 5000));
  int updates = h.sink.updates;

  pods->fail_status = 500;
  pods->expire_watch = true; /* forces a relist, which fails */
  int f2 = 2;
  CHECK(run_until(&h, failures_at_least, &f2, 8000));
  CHECK_INT(h.sink.updates, updates); /* no empty list was reported */
  CHECK(find_target(&h.sink, "10.0.0.1:9100") != NULL);

  /* Back to health: the same list is reported again (the runner counted
   * the failures and waits for a success). */
  pods->fail_status = 0;
  int more = updates + 1;
  CHECK(run_until(&h, updates_at_least, &more, 8000));
  CHECK_INT(h.sink.last.n, 1);
  mg_log_set_level(MG_LOG_INFO);
  free(p1);
  h_finish(&h);
}

MG_TEST(first_list_failure_is_reported) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  pods->fail_status = 403;
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  mg_log_set_level(MG_LOG_ERROR);
  REQUIRE(h_start(&h) == 0);
  CHECK_INT(h.sink.failures, 0); /* never from inside start */
  int f1 = 1;
  CHECK(run_until(&h, failures_at_least, &f1, 5000));
  CHECK_INT(h.sink.updates, 0);
  mg_log_set_level(MG_LOG_INFO);
  h_finish(&h);
}

MG_TEST(service_role_labels) {
  harness_t h;
  h_init(&h);
  fres_t *svcs = fake_res(&h.fake, "/api/v1/services", "ServiceList");
  fres_put(svcs, "web", SVC_WEB);
  fres_put(svcs, "db", SVC_EXT);
  opt(h.sd.opts, "role", "service");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  size_t want = 3;
  CHECK(run_until(&h, ntargets_is, &want, 5000));
  static const char *const web80[] = {"__meta_kubernetes_namespace=shop",
                                      "__meta_kubernetes_service_name=web",
                                      "__meta_kubernetes_service_label_app=web",
                                      "__meta_kubernetes_service_labelpresent_app=true",
                                      "__meta_kubernetes_service_annotation_prometheus_io_probe=true",
                                      "__meta_kubernetes_service_annotationpresent_prometheus_io_probe=true",
                                      "__meta_kubernetes_service_port_name=http",
                                      "__meta_kubernetes_service_port_number=80",
                                      "__meta_kubernetes_service_port_protocol=TCP",
                                      "__meta_kubernetes_service_type=LoadBalancer",
                                      "__meta_kubernetes_service_cluster_ip=10.96.0.10",
                                      "__meta_kubernetes_service_loadbalancer_ip=1.2.3.4",
                                      NULL};
  check_labels(find_target(&h.sink, "web.shop.svc:80"), web80);
  static const char *const db[] = {"__meta_kubernetes_namespace=shop",
                                   "__meta_kubernetes_service_name=db",
                                   "__meta_kubernetes_service_port_name=",
                                   "__meta_kubernetes_service_port_number=5432",
                                   "__meta_kubernetes_service_port_protocol=TCP",
                                   "__meta_kubernetes_service_type=ExternalName",
                                   "__meta_kubernetes_service_external_name=db.example.com",
                                   NULL};
  check_labels(find_target(&h.sink, "db.shop.svc:5432"), db);
  h_finish(&h);
}

MG_TEST(node_role_labels) {
  harness_t h;
  h_init(&h);
  fres_t *nodes = fake_res(&h.fake, "/api/v1/nodes", "NodeList");
  fres_put(nodes, "node-a", NODE_A);
  opt(h.sd.opts, "role", "node");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  size_t want = 1;
  CHECK(run_until(&h, ntargets_is, &want, 5000));
  static const char *const n[] = {"instance=node-a",
                                  "__meta_kubernetes_node_name=node-a",
                                  "__meta_kubernetes_node_provider_id=aws:///eu-west-1a/i-0abc",
                                  "__meta_kubernetes_node_label_topology_kubernetes_io_zone=eu-west-1a",
                                  "__meta_kubernetes_node_labelpresent_topology_kubernetes_io_zone=true",
                                  "__meta_kubernetes_node_label_kubernetes_io_os=linux",
                                  "__meta_kubernetes_node_labelpresent_kubernetes_io_os=true",
                                  "__meta_kubernetes_node_annotation_node_alpha_kubernetes_io_ttl=0",
                                  "__meta_kubernetes_node_annotationpresent_node_alpha_kubernetes_io_ttl=true",
                                  "__meta_kubernetes_node_address_Hostname=ip-10-0-0-5",
                                  "__meta_kubernetes_node_address_InternalIP=10.0.0.5",
                                  "__meta_kubernetes_node_address_ExternalIP=3.3.3.3",
                                  NULL};
  check_labels(find_target(&h.sink, "10.0.0.5:10250"), n);
  h_finish(&h);
}

/* Endpoints and slices join pod and service labels, so the three
 * collections are served. */
static void serve_web_backends(harness_t *h) {
  fres_t *pods = fake_res(&h->fake, "/api/v1/pods", "PodList");
  fres_t *svcs = fake_res(&h->fake, "/api/v1/services", "ServiceList");
  fres_put(pods, "web", POD_WEB);
  fres_put(svcs, "web", SVC_WEB);
}

#define WEB_SVC_LABELS                                                                                              \
  "__meta_kubernetes_service_name=web", "__meta_kubernetes_service_label_app=web",                                  \
      "__meta_kubernetes_service_labelpresent_app=true",                                                            \
      "__meta_kubernetes_service_annotation_prometheus_io_probe=true",                                              \
      "__meta_kubernetes_service_annotationpresent_prometheus_io_probe=true"

MG_TEST(endpoints_role_labels) {
  harness_t h;
  h_init(&h);
  serve_web_backends(&h);
  fres_t *eps = fake_res(&h.fake, "/api/v1/endpoints", "EndpointsList");
  fres_put(eps, "web", EPS_WEB);
  opt(h.sd.opts, "role", "endpoints");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  /* 10.1.2.3:8080 (ready, the pod's app/http port), 10.1.9.9:8080 (not
   * ready, no pod), and the pod's other container ports 9100 and 7000. */
  size_t want = 4;
  CHECK(run_until(&h, ntargets_is, &want, 5000));
  static const char *const ready[] = {POD_WEB_LABELS,
                                      WEB_SVC_LABELS,
                                      "__meta_kubernetes_endpoints_name=web",
                                      "__meta_kubernetes_endpoints_label_app=web",
                                      "__meta_kubernetes_endpoints_labelpresent_app=true",
                                      "__meta_kubernetes_endpoint_port_name=http",
                                      "__meta_kubernetes_endpoint_port_protocol=TCP",
                                      "__meta_kubernetes_endpoint_ready=true",
                                      "__meta_kubernetes_endpoint_address_target_kind=Pod",
                                      "__meta_kubernetes_endpoint_address_target_name=web-7d4b9c-x2x9z",
                                      "__meta_kubernetes_endpoint_node_name=node-a",
                                      "__meta_kubernetes_pod_container_name=app",
                                      "__meta_kubernetes_pod_container_image=shop/web:1.2",
                                      "__meta_kubernetes_pod_container_port_name=http",
                                      "__meta_kubernetes_pod_container_port_number=8080",
                                      "__meta_kubernetes_pod_container_port_protocol=TCP",
                                      "__meta_kubernetes_pod_container_init=false",
                                      NULL};
  check_labels(find_target(&h.sink, "10.1.2.3:8080"), ready);
  static const char *const not_ready[] = {"__meta_kubernetes_namespace=shop",
                                          WEB_SVC_LABELS,
                                          "__meta_kubernetes_endpoints_name=web",
                                          "__meta_kubernetes_endpoints_label_app=web",
                                          "__meta_kubernetes_endpoints_labelpresent_app=true",
                                          "__meta_kubernetes_endpoint_port_name=http",
                                          "__meta_kubernetes_endpoint_port_protocol=TCP",
                                          "__meta_kubernetes_endpoint_ready=false",
                                          "__meta_kubernetes_endpoint_hostname=h9",
                                          NULL};
  check_labels(find_target(&h.sink, "10.1.9.9:8080"), not_ready);
  const mg_conf_target_t *extra = find_target(&h.sink, "10.1.2.3:9100");
  CHECK_STR(label(extra, "__meta_kubernetes_pod_container_port_name"), "metrics");
  CHECK_STR(label(extra, "__meta_kubernetes_service_name"), "web");
  CHECK(label(extra, "__meta_kubernetes_endpoint_ready") == NULL);
  CHECK_STR(label(find_target(&h.sink, "10.1.2.3:7000"), "__meta_kubernetes_pod_container_init"), "true");
  h_finish(&h);
}

MG_TEST(endpointslice_role_labels) {
  harness_t h;
  h_init(&h);
  serve_web_backends(&h);
  fres_t *sl = fake_res(&h.fake, "/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList");
  fres_put(sl, "web-abcde", SLICE_WEB);
  opt(h.sd.opts, "role", "endpointslice");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  size_t want = 4;
  CHECK(run_until(&h, ntargets_is, &want, 5000));
#define SLICE_LABELS                                                                                                \
  "__meta_kubernetes_namespace=shop", WEB_SVC_LABELS, "__meta_kubernetes_endpointslice_name=web-abcde",             \
      "__meta_kubernetes_endpointslice_address_type=IPv4",                                                          \
      "__meta_kubernetes_endpointslice_label_kubernetes_io_service_name=web",                                       \
      "__meta_kubernetes_endpointslice_labelpresent_kubernetes_io_service_name=true",                               \
      "__meta_kubernetes_endpointslice_label_endpointslice_kubernetes_io_managed_by=endpointslice-controller.k8s.io", \
      "__meta_kubernetes_endpointslice_labelpresent_endpointslice_kubernetes_io_managed_by=true",                   \
      "__meta_kubernetes_endpointslice_port_name=http", "__meta_kubernetes_endpointslice_port_protocol=TCP",        \
      "__meta_kubernetes_endpointslice_port=8080", "__meta_kubernetes_endpointslice_port_app_protocol=http"
  static const char *const ready[] = {SLICE_LABELS,
                                      POD_WEB_LABELS,
                                      "__meta_kubernetes_endpointslice_endpoint_conditions_ready=true",
                                      "__meta_kubernetes_endpointslice_endpoint_conditions_serving=true",
                                      "__meta_kubernetes_endpointslice_endpoint_conditions_terminating=false",
                                      "__meta_kubernetes_endpointslice_address_target_kind=Pod",
                                      "__meta_kubernetes_endpointslice_address_target_name=web-7d4b9c-x2x9z",
                                      "__meta_kubernetes_endpointslice_endpoint_node_name=node-a",
                                      "__meta_kubernetes_endpointslice_endpoint_zone=eu-west-1a",
                                      "__meta_kubernetes_pod_container_name=app",
                                      "__meta_kubernetes_pod_container_image=shop/web:1.2",
                                      "__meta_kubernetes_pod_container_port_name=http",
                                      "__meta_kubernetes_pod_container_port_number=8080",
                                      "__meta_kubernetes_pod_container_port_protocol=TCP",
                                      "__meta_kubernetes_pod_container_init=false",
                                      NULL};
  check_labels(find_target(&h.sink, "10.1.2.3:8080"), ready);
  static const char *const other[] = {
      SLICE_LABELS,
      "__meta_kubernetes_endpointslice_endpoint_conditions_ready=false",
      "__meta_kubernetes_endpointslice_endpoint_hostname=h9",
      "__meta_kubernetes_endpointslice_endpoint_topology_kubernetes_io_hostname=node-b",
      "__meta_kubernetes_endpointslice_endpoint_topology_present_kubernetes_io_hostname=true",
      NULL};
  check_labels(find_target(&h.sink, "10.1.9.9:8080"), other);
  CHECK(find_target(&h.sink, "10.1.2.3:9100") != NULL);
  CHECK(find_target(&h.sink, "10.1.2.3:7000") != NULL);
  h_finish(&h);
}

MG_TEST(attach_metadata_node_for_pods) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  fres_t *nodes = fake_res(&h.fake, "/api/v1/nodes", "NodeList");
  char *p1 = pod_json("p1", "10.0.0.1", "one");
  fres_put(pods, "p1", p1);
  fres_put(nodes, "node-a", NODE_A);
  opt(h.sd.opts, "role", "pod");
  opt(h.sd.opts, "api_server", h.url);
  opt(opt(h.sd.opts, "attach_metadata", NULL), "node", "true");
  mg_conf_val_t *s = push(opt_list(h.sd.opts, "selectors"), NULL);
  opt(s, "role", "node");
  opt(s, "label", "kubernetes.io/os=linux");
  REQUIRE(h_start(&h) == 0);
  const char *const zone[] = {"10.0.0.1:9100", "__meta_kubernetes_node_label_topology_kubernetes_io_zone",
                              "eu-west-1a"};
  CHECK(run_until(&h, label_is, zone, 5000));
  const mg_conf_target_t *t = find_target(&h.sink, "10.0.0.1:9100");
  CHECK_STR(label(t, "__meta_kubernetes_node_name"), "node-a");
  CHECK_STR(label(t, "__meta_kubernetes_node_annotationpresent_node_alpha_kubernetes_io_ttl"), "true");
  CHECK(label(t, "__meta_kubernetes_node_provider_id") == NULL); /* node role only */
  CHECK_STR(nodes->last_query, "labelSelector=kubernetes.io%2Fos%3Dlinux");
  /* A node change reaches the pods on it. */
  char node2[sizeof NODE_A + 16];
  snprintf(node2, sizeof node2, "%s", NODE_A);
  char *z = strstr(node2, "eu-west-1a\"");
  memcpy(z, "eu-west-1b", 10);
  fres_put(nodes, "node-a", node2);
  const char *const zone_b[] = {"10.0.0.1:9100", "__meta_kubernetes_node_label_topology_kubernetes_io_zone",
                                "eu-west-1b"};
  CHECK(run_until(&h, label_is, zone_b, 5000));
  free(p1);
  h_finish(&h);
}

MG_TEST(stop_with_requests_in_flight) {
  harness_t h;
  h_init(&h);
  fres_t *pods = fake_res(&h.fake, "/api/v1/pods", "PodList");
  fres_t *svcs = fake_res(&h.fake, "/api/v1/services", "ServiceList");
  fake_res(&h.fake, "/api/v1/endpoints", "EndpointsList");
  (void)pods;
  (void)svcs;
  opt(h.sd.opts, "role", "endpoints");
  opt(h.sd.opts, "api_server", h.url);
  REQUIRE(h_start(&h) == 0);
  /* Three lists are on their way; stop now: no report comes after, and
   * the loop closes (h_finish checks uv_loop_close). */
  mg_sd_kubernetes_ops.stop(h.state);
  h.state = NULL;
  uv_run(&h.loop, UV_RUN_NOWAIT);
  int zero = 1;
  CHECK(!run_until(&h, updates_at_least, &zero, 300));
  CHECK_INT(h.sink.updates + h.sink.failures, 0);
  h_finish(&h);
}

/* ---------------------------------------------------------- in cluster */

/* A self-signed certificate for 127.0.0.1 that is also its own CA. */
static bool make_cert(const char *cert_path, const char *key_path) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (!key || !x) return false;
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"fake-apiserver", -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
  const char *exts[][2] = {{"basicConstraints", "critical,CA:TRUE"}, {"subjectAltName", "IP:127.0.0.1"}};
  for (size_t i = 0; i < 2; i++) {
    X509_EXTENSION *e = X509V3_EXT_conf(NULL, &ctx, exts[i][0], exts[i][1]);
    if (!e) return false;
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(x, key, EVP_sha256());
  FILE *fc = fopen(cert_path, "w"), *fk = fopen(key_path, "w");
  bool ok = fc && fk && PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, key, NULL, NULL, 0, NULL, NULL);
  if (fc) fclose(fc);
  if (fk) fclose(fk);
  X509_free(x);
  EVP_PKEY_free(key);
  return ok;
}

MG_TEST(in_cluster_service_account) {
  harness_t h;
  h_init(&h);
  char dir[] = "/tmp/mg_k8s_saXXXXXX", ca[64], key[64], tok[64], ns[64], port[16];
  REQUIRE(mkdtemp(dir));
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  snprintf(key, sizeof key, "%s/tls.key", dir);
  snprintf(tok, sizeof tok, "%s/token", dir);
  snprintf(ns, sizeof ns, "%s/namespace", dir);
  REQUIRE(make_cert(ca, key));
  write_file(tok, "eyJhbGciOiJSUzI1NiJ9.sa-token\n");
  write_file(ns, "monitoring");
  REQUIRE(mg_http_server_tls(h.fake.srv, ca, key, NULL) == 0);
  fres_t *pods = fake_res(&h.fake, "/api/v1/namespaces/monitoring/pods", "PodList");
  char *p1 = pod_json("p1", "10.0.0.1", "one");
  fres_put(pods, "p1", p1);
  snprintf(port, sizeof port, "%d", h.fake.port);
  setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", port, 1);
  setenv("MOONGATE_K8S_SERVICEACCOUNT_DIR", dir, 1);
  opt(h.sd.opts, "role", "pod");
  opt(opt(h.sd.opts, "namespaces", NULL), "own_namespace", "true");
  REQUIRE(h_start(&h) == 0);
  size_t one = 1;
  CHECK(run_until(&h, ntargets_is, &one, 5000));
  CHECK_STR(pods->last_auth, "Bearer eyJhbGciOiJSUzI1NiJ9.sa-token");
  CHECK(find_target(&h.sink, "10.0.0.1:9100") != NULL);
  h_finish(&h);

  /* Outside a pod the provider says so at start. */
  unsetenv("KUBERNETES_SERVICE_HOST");
  harness_t h2;
  h_init(&h2);
  opt(h2.sd.opts, "role", "pod");
  mg_log_set_level(MG_LOG_OFF);
  CHECK_INT(h_start(&h2), MG_ECONFIG);
  mg_log_set_level(MG_LOG_INFO);
  CHECK(h2.state == NULL);
  h_finish(&h2);
  unsetenv("KUBERNETES_SERVICE_PORT");
  unsetenv("MOONGATE_K8S_SERVICEACCOUNT_DIR");
  unlink(ca);
  unlink(key);
  unlink(tok);
  unlink(ns);
  rmdir(dir);
  free(p1);
}

MG_TEST_MAIN()
