/* Unit tests for mg_conf: builders, defaults, checks, durations and sizes,
 * and the printed plan (which must never show a secret). */
#include "mg_conf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_test.h"

MG_TEST(builders_and_free) {
  mg_conf_t *c = mg_conf_new("x.lua", MG_CONF_LUA);
  REQUIRE(c);
  mg_conf_job_t *j = mg_conf_add_job(c, "node");
  REQUIRE(j);
  CHECK(j->honor_timestamps);
  CHECK(j->enable_compression);
  mg_conf_target_t *t = mg_conf_job_add_target(j, "localhost:9100");
  REQUIRE(t);
  CHECK_INT(mg_kvs_add(&t->labels, "env", "prod"), 0);
  CHECK_INT(mg_kvs_set(&t->labels, "env", "dev"), 0);
  CHECK_INT(t->labels.n, 1);
  CHECK_STR(mg_kvs_get(&t->labels, "env"), "dev");
  CHECK(mg_kvs_get(&t->labels, "nope") == NULL);
  mg_conf_dest_t *d = mg_conf_add_dest(c, NULL, MG_DEST_REMOTE_WRITE);
  REQUIRE(d);
  CHECK(d->queue.retry_on_http_429);
  CHECK(d->send_metadata);
  CHECK_INT(mg_conf_set_str(&d->url, "http://localhost:9090/api/v1/write"), 0);
  CHECK_INT(mg_conf_set_secret(&d->auth.basic_password, "pw"), 0);
  CHECK_INT(mg_conf_set_secret(&d->auth.basic_password, "pw2"), 0);
  CHECK_STR(d->auth.basic_password, "pw2");
  CHECK_INT(mg_conf_set_str(&d->auth.basic_username, NULL), 0);
  CHECK(d->auth.basic_username == NULL);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK_STR(d->name, "rw-0");
  mg_conf_free(c);
  mg_conf_free(NULL);
}

MG_TEST_MAIN()
