/* Unit tests for the base modules: err, log, mem, buf, str, metrics. */
#include <math.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_str.h"
#include "mg_test.h"

MG_TEST(err_names) {
  CHECK_STR(mg_err_name(MG_ETIMEDOUT), "ETIMEDOUT");
  CHECK_STR(mg_err_str(MG_ETIMEDOUT), "timed out");
  CHECK_STR(mg_err_name(0), "OK");
  CHECK_STR(mg_err_name(12345), "EUNKNOWN");
  CHECK_INT(mg_err_from_uv(-110), MG_ETIMEDOUT);
  CHECK_INT(mg_err_from_uv(-111), MG_ECONNREFUSED);
  CHECK_INT(mg_err_from_uv(-3008), MG_EDNS);
}

MG_TEST(buf_limit) {
  mg_buf_t b;
  mg_buf_init(&b, 10);
  CHECK_INT(mg_buf_append(&b, "hello", 5), 0);
  CHECK_INT(mg_buf_append(&b, "world", 5), 0);
  CHECK_INT(mg_buf_append(&b, "!", 1), MG_ETOOBIG);
  CHECK_STR(b.data, "helloworld");
  mg_buf_consume(&b, 5);
  CHECK_STR(b.data, "world");
  CHECK_INT(mg_buf_printf(&b, "%d", 42), 0);
  CHECK_STR(b.data, "world42");
  mg_buf_cleanup(&b);
  mg_buf_init(&b, 0);
  for (int i = 0; i < 1000; i++) CHECK_INT(mg_buf_printf(&b, "%300s", "x"), 0);
  CHECK_INT(b.len, 300000);
  mg_buf_cleanup(&b);
}

MG_TEST(buf_double_like_prometheus) {
  static const struct {
    double v;
    const char *want;
  } t[] = {{900, "900"}, {0.21, "0.21"}, {51234.5, "51234.5"}, {1234567, "1.234567e+06"}, {1e-5, "1e-05"},
           {0.0001, "0.0001"}, {-2.5, "-2.5"}, {0, "0"}, {1.7976931348623157e308, "1.7976931348623157e+308"},
           {0.1 + 0.2, "0.30000000000000004"}, {123456, "123456"}};
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    mg_buf_t b;
    mg_buf_init(&b, 0);
    mg_buf_append_double(&b, t[i].v);
    CHECK_STR(b.data, t[i].want);
    mg_buf_cleanup(&b);
  }
}

MG_TEST(mem_fault_injection) {
  mg_mem_fail_at(2);
  void *a = mg_malloc(8);
  void *b = mg_malloc(8);
  void *c = mg_malloc(8);
  CHECK(a != NULL);
  CHECK(b == NULL);
  CHECK(c != NULL);
  mg_free(a);
  mg_free(c);
  mg_mem_fail_at(0);
  CHECK(mg_mallocarray(SIZE_MAX / 2, 4) == NULL);
}

MG_TEST(arena) {
  mg_arena_t a;
  mg_arena_init(&a, 64, 1000);
  char *s = mg_arena_strndup(&a, "abc", 3);
  CHECK_STR(s, "abc");
  void *big = mg_arena_alloc(&a, 500);
  CHECK(big != NULL);
  CHECK(((uintptr_t)big & 7) == 0);
  CHECK(mg_arena_alloc(&a, 600) == NULL); /* over the limit */
  mg_arena_reset(&a);
  CHECK_INT(a.used, 0);
  CHECK(mg_arena_alloc(&a, 600) != NULL);
  mg_arena_cleanup(&a);
}

MG_TEST(intern_pointer_equality) {
  mg_intern_t t;
  mg_intern_init(&t);
  const char *a = mg_intern(&t, "job", 3);
  char tmp[8] = "jobx";
  const char *b = mg_intern(&t, tmp, 3);
  CHECK(a == b);
  CHECK_INT(mg_intern_len(a), 3);
  char name[32];
  const char *first = NULL;
  for (int i = 0; i < 5000; i++) {
    int n = snprintf(name, sizeof name, "label_%d", i);
    const char *p = mg_intern(&t, name, (size_t)n);
    if (i == 0) first = p;
    CHECK(p != NULL);
  }
  CHECK(mg_intern(&t, "label_0", 7) == first);
  CHECK_INT(t.count, 5001);
  mg_intern_cleanup(&t);
}

MG_TEST(str_cmp_order) {
  CHECK(mg_str_cmp(MG_STR_LIT("__name__"), MG_STR_LIT("a")) < 0);
  CHECK(mg_str_cmp(MG_STR_LIT("Z"), MG_STR_LIT("__name__")) < 0);
  CHECK(mg_str_cmp(MG_STR_LIT("ab"), MG_STR_LIT("abc")) < 0);
  CHECK(mg_str_cmp(MG_STR_LIT("abc"), MG_STR_LIT("abc")) == 0);
  CHECK(mg_hash64("abc", 3, 0) == mg_hash64("abc", 3, 0));
  CHECK(mg_hash64("abc", 3, 0) != mg_hash64("abd", 3, 0));
}

MG_TEST(log_quote_and_mask) {
  char out[64];
  CHECK_STR(mg_log_q(out, sizeof out, "plain", 5), "plain");
  CHECK_STR(mg_log_q(out, sizeof out, "has space", 9), "\"has space\"");
  CHECK_STR(mg_log_q(out, sizeof out, "q\"x\n", 4), "\"q\\\"x\\n\"");
  CHECK_STR(mg_log_q(out, sizeof out, "", 0), "\"\"");
  char small[12];
  mg_log_q(small, sizeof small, "abcdefghijklmnopqrstuvwxyz", 26);
  CHECK(strlen(small) < sizeof small);
  CHECK_STR(mg_log_mask(out, sizeof out, "ASIAXXXXSECRETID"), "ASIA****");
  unsigned long long last = 0;
  CHECK(mg_log_ratelimit(&last, 1000, 500));
  CHECK(!mg_log_ratelimit(&last, 1200, 500));
  CHECK(mg_log_ratelimit(&last, 1600, 500));
}

MG_TEST(metrics_render) {
  mg_metric_t *a = mg_metrics_counter("mg_test_total", "A test counter.", "job", "x\"y", NULL);
  mg_metric_t *b = mg_metrics_gauge("mg_a_gauge", "A gauge.", NULL);
  REQUIRE(a && b);
  CHECK(mg_metrics_counter("mg_test_total", "ignored", "job", "x\"y", NULL) == a);
  mg_metric_add(a, 3);
  mg_metric_set(b, 1.5);
  mg_buf_t out;
  mg_buf_init(&out, 0);
  CHECK_INT(mg_metrics_render(&out), 0);
  CHECK_STR(out.data,
            "# HELP mg_a_gauge A gauge.\n# TYPE mg_a_gauge gauge\nmg_a_gauge 1.5\n"
            "# HELP mg_test_total A test counter.\n# TYPE mg_test_total counter\n"
            "mg_test_total{job=\"x\\\"y\"} 3\n");
  mg_metrics_remove(a);
  mg_buf_reset(&out);
  mg_metrics_render(&out);
  CHECK(strstr(out.data, "mg_test_total") == NULL);
  mg_buf_cleanup(&out);
  mg_metrics_reset();
}

MG_TEST_MAIN()
