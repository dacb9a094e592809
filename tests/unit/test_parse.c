/* Unit tests for mg_parse: both exposition formats, every error message with
 * its position, truncated bodies, and the float parser against strtod on
 * random and hand-picked inputs. */
#include <locale.h>
#include <math.h>
#include <regex.h>
#include <stdbool.h>
#include <stdint.h>

#include "mg_err.h"
#include "mg_parse.h"
#include "mg_test.h"

/* ---- recording callbacks ------------------------------------------------ */

#define REC_MAX_SAMPLES 2048
#define REC_MAX_LABELS 300
#define REC_MAX_META 512

typedef struct rec_sample {
  mg_str_t series, name;
  mg_parse_label_t labels[REC_MAX_LABELS];
  size_t nlabels;
  bool sorted;
  double value;
  bool has_ts;
  int64_t ts;
  uint32_t line;
} rec_sample_t;

typedef struct rec {
  rec_sample_t *s;
  size_t ns;
  mg_parse_meta_t m[REC_MAX_META];
  size_t nm;
  size_t stop_sample_at; /* 1-based; 0 = never */
  size_t stop_meta_at;
  int stop_rc;
} rec_t;

static int rec_on_sample(void *ud, const mg_parse_sample_t *s) {
  rec_t *r = ud;
  if (r->ns < REC_MAX_SAMPLES) {
    rec_sample_t *o = &r->s[r->ns];
    o->series = s->series;
    o->name = s->name;
    o->nlabels = s->nlabels;
    o->sorted = s->sorted;
    for (size_t i = 0; i < s->nlabels && i < REC_MAX_LABELS; i++) o->labels[i] = s->labels[i];
    o->value = s->value;
    o->has_ts = s->has_timestamp;
    o->ts = s->timestamp_ms;
    o->line = s->line;
  }
  r->ns++;
  if (r->stop_sample_at && r->ns == r->stop_sample_at) return r->stop_rc;
  return 0;
}

static int rec_on_meta(void *ud, const mg_parse_meta_t *m) {
  rec_t *r = ud;
  if (r->nm < REC_MAX_META) r->m[r->nm] = *m;
  r->nm++;
  if (r->stop_meta_at && r->nm == r->stop_meta_at) return r->stop_rc;
  return 0;
}

static const mg_parse_callbacks_t rec_cb = {rec_on_sample, rec_on_meta};

static rec_t *rec_new(void) {
  rec_t *r = calloc(1, sizeof *r);
  r->s = calloc(REC_MAX_SAMPLES, sizeof *r->s);
  return r;
}

static void rec_free(rec_t *r) {
  if (!r) return;
  free(r->s);
  free(r);
}

/* Parse from an exactly sized heap copy so ASan catches any read past the
 * end (the parser must never rely on a terminator). The copy is gone when
 * this returns: callers look at rc and the error only, not at views. */
static int run_n(const char *body, size_t len, mg_parse_format_t fmt, rec_t *r, mg_parse_error_t *e) {
  char *copy = malloc(len ? len : 1);
  memcpy(copy, body, len);
  int rc = mg_parse(copy, len, fmt, &rec_cb, r, e);
  free(copy);
  return rc;
}

/* Most tests want to inspect views afterwards, so parse the caller's buffer
 * (string literals, which are valid until exit). */
static int run(const char *body, mg_parse_format_t fmt, rec_t *r, mg_parse_error_t *e) {
  return mg_parse(body, strlen(body), fmt, &rec_cb, r, e);
}

static bool str_is(mg_str_t s, const char *c) { return mg_str_eq_c(s, c); }

#define CHECK_VIEW(view, lit) CHECK_MEM((view).p, (view).n, (lit), strlen(lit))

static uint64_t bits_of(double d) {
  uint64_t b;
  memcpy(&b, &d, sizeof b);
  return b;
}

/* ---- text format ------------------------------------------------------- */

MG_TEST(text_basic_samples) {
  const char *body =
      "# HELP http_requests_total Total HTTP requests.\n"
      "# TYPE http_requests_total counter\n"
      "http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n"
      "http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n"
      "\n"
      "metric_without_timestamp_and_labels 12.47\n"
      "some:aggregate:rate5m{a_b=\"c\"}\t1\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 4);
  CHECK_VIEW(r->s[0].series, "http_requests_total{method=\"post\",code=\"200\"}");
  CHECK_VIEW(r->s[0].name, "http_requests_total");
  CHECK_INT(r->s[0].nlabels, 2);
  /* Body order, not sorted. */
  CHECK_VIEW(r->s[0].labels[0].name, "method");
  CHECK_VIEW(r->s[0].labels[0].value, "post");
  CHECK_VIEW(r->s[0].labels[1].name, "code");
  CHECK_VIEW(r->s[0].labels[1].value, "200");
  CHECK(!r->s[0].labels[0].escaped);
  CHECK_DBL(r->s[0].value, 1027);
  CHECK(r->s[0].has_ts);
  CHECK_INT(r->s[0].ts, 1395066363000LL);
  CHECK_INT(r->s[0].line, 3);
  CHECK_DBL(r->s[1].value, 3);
  CHECK_INT(r->s[1].line, 4);
  CHECK_VIEW(r->s[2].series, "metric_without_timestamp_and_labels");
  CHECK_INT(r->s[2].nlabels, 0);
  CHECK(!r->s[2].has_ts);
  CHECK_DBL(r->s[2].value, 12.47);
  CHECK_INT(r->s[2].line, 6);
  CHECK_VIEW(r->s[3].series, "some:aggregate:rate5m{a_b=\"c\"}");
  CHECK_DBL(r->s[3].value, 1);
  CHECK_INT(r->nm, 2);
  CHECK_INT(r->m[0].kind, MG_META_HELP);
  CHECK_VIEW(r->m[0].family, "http_requests_total");
  CHECK_VIEW(r->m[0].text, "Total HTTP requests.");
  CHECK_INT(r->m[0].line, 1);
  CHECK_INT(r->m[1].kind, MG_META_TYPE);
  CHECK_INT(r->m[1].type, MG_MTYPE_COUNTER);
  CHECK_INT(r->m[1].text.n, 0);
  CHECK_INT(r->m[1].line, 2);
  rec_free(r);
}

/* The whitespace cases of Prometheus' own promparse tests. */
MG_TEST(text_whitespace_like_prometheus) {
  const char *body =
      "# HELP go_gc_duration_seconds A summary of the GC invocation durations.\n"
      "# \tTYPE go_gc_duration_seconds summary\n"
      "go_gc_duration_seconds{quantile=\"0\"} 4.9351e-05\n"
      "go_gc_duration_seconds{quantile=\"0.25\",} 7.424100000000001e-05\n"
      "go_gc_duration_seconds{quantile=\"0.8\", a=\"b\"} 8.3835e-05\n"
      "go_gc_duration_seconds{ quantile=\"0.9\", a=\"b\"} 8.3835e-05\n"
      "# Hrandom comment starting with prefix of HELP\n"
      "#\n"
      "# comment with escaped \\n newline\n"
      "# HELP nohelp1\n"
      "# HELP nohelp2 \n"
      "go_gc_duration_seconds { quantile= \"1.0\", a= \"b\", } 8.3835e-05\n"
      "go_gc_duration_seconds { quantile = \"2.0\" a = \"b\" } 8.3835e-05\n"
      "go_goroutines 33  \t123123\n"
      "  indented 5\n"
      "_metric_starting_with_underscore 1\n"
      "testmetric{_label_starting_with_underscore=\"foo\"} 1\n"
      "#HELP not_meta no blank after hash\n"
      "# HELP\n"
      "# UNIT only_openmetrics_has_units seconds\n"
      "glued{a=\"b\"}7\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 11);
  CHECK_VIEW(r->s[1].series, "go_gc_duration_seconds{quantile=\"0.25\",}");
  CHECK_INT(r->s[1].nlabels, 1);
  CHECK_DBL(r->s[1].value, 7.424100000000001e-05);
  CHECK_VIEW(r->s[3].labels[0].name, "quantile");
  CHECK_VIEW(r->s[3].labels[1].value, "b");
  /* The series span keeps interior blanks untouched. */
  CHECK_VIEW(r->s[4].series, "go_gc_duration_seconds { quantile= \"1.0\", a= \"b\", }");
  CHECK_VIEW(r->s[4].name, "go_gc_duration_seconds");
  CHECK_INT(r->s[4].nlabels, 2);
  /* Missing comma between labels: Prometheus' text lexer accepts it. */
  CHECK_INT(r->s[5].nlabels, 2);
  CHECK_VIEW(r->s[5].labels[0].value, "2.0");
  CHECK_VIEW(r->s[5].labels[1].name, "a");
  CHECK_DBL(r->s[6].value, 33);
  CHECK(r->s[6].has_ts);
  CHECK_INT(r->s[6].ts, 123123);
  CHECK_VIEW(r->s[7].series, "indented");
  CHECK_INT(r->s[7].line, 15);
  CHECK_VIEW(r->s[10].series, "glued{a=\"b\"}");
  CHECK_DBL(r->s[10].value, 7);
  REQUIRE(r->nm == 4);
  CHECK_INT(r->m[1].kind, MG_META_TYPE);
  CHECK_INT(r->m[1].type, MG_MTYPE_SUMMARY);
  CHECK_VIEW(r->m[2].family, "nohelp1");
  CHECK_INT(r->m[2].text.n, 0);
  CHECK_VIEW(r->m[3].family, "nohelp2");
  CHECK_INT(r->m[3].text.n, 0);
  CHECK_INT(r->m[3].line, 11);
  rec_free(r);
}

MG_TEST(text_types_and_help_text) {
  const char *body =
      "# TYPE a counter\n# TYPE b gauge\n# TYPE c histogram\n# TYPE d summary\n# TYPE e untyped\n"
      "# HELP f  two leading blanks keep one\n"
      "# HELP g\tafter a tab\n"
      "# HELP h back\\\\slash \\n newline \\\" quote\n"
      "# HELP i \t \n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->nm == 9);
  CHECK_INT(r->m[0].type, MG_MTYPE_COUNTER);
  CHECK_INT(r->m[1].type, MG_MTYPE_GAUGE);
  CHECK_INT(r->m[2].type, MG_MTYPE_HISTOGRAM);
  CHECK_INT(r->m[3].type, MG_MTYPE_SUMMARY);
  CHECK_INT(r->m[4].type, MG_MTYPE_UNKNOWN);
  CHECK_VIEW(r->m[5].text, " two leading blanks keep one");
  CHECK_VIEW(r->m[6].text, "after a tab");
  CHECK_VIEW(r->m[7].text, "back\\\\slash \\n newline \\\" quote");
  CHECK_INT(r->m[8].text.n, 0); /* only blanks: no text, as in Prometheus */
  char out[64];
  size_t n = mg_parse_unescape_help(r->m[7].text, MG_FMT_PROM_TEXT, out);
  CHECK_MEM(out, n, "back\\slash \n newline \\\" quote", strlen("back\\slash \n newline \\\" quote"));
  n = mg_parse_unescape_help(r->m[7].text, MG_FMT_OPENMETRICS, out);
  CHECK_MEM(out, n, "back\\slash \n newline \" quote", strlen("back\\slash \n newline \" quote"));
  /* OpenMetrics-only types are not types in the text format. */
  CHECK_INT(run("# TYPE x gaugehistogram\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_INT(run("# TYPE x unknown\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  rec_free(r);
}

MG_TEST(label_escapes_and_unescape) {
  const char *body =
      "m{a=\"x\\\\y\",b=\"say \\\"hi\\\"\",c=\"l1\\nl2\",d=\"tab\\tstays\",e=\"plain\"} 1\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 1 && r->s[0].nlabels == 5);
  const mg_parse_label_t *l = r->s[0].labels;
  char out[64];
  size_t n;
  CHECK(l[0].escaped);
  CHECK_VIEW(l[0].value, "x\\\\y");
  n = mg_parse_unescape(l[0].value, out);
  CHECK_MEM(out, n, "x\\y", 3);
  n = mg_parse_unescape(l[1].value, out);
  CHECK_MEM(out, n, "say \"hi\"", 8);
  n = mg_parse_unescape(l[2].value, out);
  CHECK_MEM(out, n, "l1\nl2", 5);
  /* Unknown escapes stay as written (Go strings.Replacer semantics). */
  n = mg_parse_unescape(l[3].value, out);
  CHECK_MEM(out, n, "tab\\tstays", 10);
  CHECK(!l[4].escaped);
  /* Left to right, no overlap: \\n is a backslash then 'n'. */
  n = mg_parse_unescape(MG_STR_LIT("\\\\n"), out);
  CHECK_MEM(out, n, "\\n", 2);
  n = mg_parse_unescape(MG_STR_LIT("end\\"), out);
  CHECK_MEM(out, n, "end\\", 4);
  /* In place. */
  char buf[] = "a\\\"b";
  n = mg_parse_unescape(mg_str_n(buf, 4), buf);
  CHECK_MEM(buf, n, "a\"b", 3);
  rec_free(r);
}

MG_TEST(text_timestamps) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("a 1 0\nb 2 9223372036854775807\nc 3 007\n", MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 3);
  CHECK_INT(r->s[0].ts, 0);
  CHECK(r->s[0].has_ts);
  CHECK_INT(r->s[1].ts, INT64_MAX);
  CHECK_INT(r->s[2].ts, 7);
  CHECK_INT(run("a 1 9223372036854775808\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "timestamp out of range");
  CHECK_INT(run("a 1 -1\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_INT(run("a 1 1.5\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  rec_free(r);
}

MG_TEST(special_values) {
  const char *body = "a NaN\nb +Inf\nc -Inf\nd Inf\ne inf\nf -infinity\ng nan\nh -0\ni 1e-400\nj 0e99999\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 10);
  CHECK(isnan(r->s[0].value));
  CHECK_U64(bits_of(r->s[0].value), 0x7ff8000000000001ULL); /* Prometheus' normal NaN */
  CHECK_DBL(r->s[1].value, INFINITY);
  CHECK_DBL(r->s[2].value, -INFINITY);
  CHECK_DBL(r->s[3].value, INFINITY);
  CHECK_DBL(r->s[4].value, INFINITY);
  CHECK_DBL(r->s[5].value, -INFINITY);
  CHECK_U64(bits_of(r->s[6].value), 0x7ff8000000000001ULL);
  CHECK_U64(bits_of(r->s[7].value), 0x8000000000000000ULL);
  CHECK_DBL(r->s[8].value, 0);
  CHECK_DBL(r->s[9].value, 0);
  const char *bad[] = {"a +NaN\n", "a -nan\n", "a infin\n", "a 1e400\n", "a 1.8e308\n", "a True\n", "a 0x10\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    CHECK_INT(run(bad[i], MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
    CHECK_STR(e.msg, "invalid float value");
  }
  rec_free(r);
}

MG_TEST(text_no_trailing_newline_and_empty) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("a 1\nb{x=\"y\"} 2 5", MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 2);
  CHECK_DBL(r->s[1].value, 2);
  CHECK_INT(r->s[1].ts, 5);
  CHECK_INT(r->s[1].line, 2);
  r->ns = 0;
  CHECK_INT(run("", MG_FMT_PROM_TEXT, r, &e), 0);
  CHECK_INT(run("\n\n  \n\t", MG_FMT_PROM_TEXT, r, &e), 0);
  CHECK_INT(run("# only a comment", MG_FMT_PROM_TEXT, r, &e), 0);
  CHECK_INT(r->ns, 0);
  CHECK_INT(mg_parse(NULL, 0, MG_FMT_PROM_TEXT, &rec_cb, r, &e), 0);
  rec_free(r);
}

/* Prometheus' text lexer rejects '\r' outside quotes and comments, so a CRLF
 * body fails on its first sample line; the message names the cause. */
MG_TEST(text_crlf_rejected) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("a 1\r\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK(e.msg && strstr(e.msg, "CRLF"));
  CHECK_INT(e.line, 1);
  CHECK_INT(e.column, 4);
  CHECK_INT(run("# HELP a text\r\n# TYPE a gauge\r\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK(e.msg && strstr(e.msg, "CRLF"));
  CHECK_INT(e.line, 2);
  CHECK_INT(e.column, 15);
  CHECK_INT(run("a 1\n\r\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK(e.msg && strstr(e.msg, "CRLF"));
  CHECK_INT(e.line, 2);
  /* Inside quotes and in HELP text '\r' is just a byte. */
  r->ns = r->nm = 0;
  CHECK_INT(run("a{x=\"1\r2\"} 1\n# HELP a cr\r\n", MG_FMT_PROM_TEXT, r, &e), 0);
  CHECK_INT(r->ns, 1);
  CHECK_VIEW(r->m[0].text, "cr\r");
  rec_free(r);
}

MG_TEST(text_raw_newline_in_label_value) {
  /* Prometheus' text lexer lets a quoted value span lines; line numbers must
   * keep counting. OpenMetrics forbids it. */
  const char *body = "a{x=\"one\ntwo\"} 1\nb 2\nc{ 3\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  REQUIRE(r->ns == 2);
  CHECK_VIEW(r->s[0].labels[0].value, "one\ntwo");
  CHECK_INT(r->s[0].line, 1);
  CHECK_INT(r->s[1].line, 3);
  CHECK_INT(e.line, 4);
  CHECK_INT(e.column, 4);
  CHECK_INT(run("a{x=\"one\ntwo\"} 1\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "unterminated label value");
  CHECK_INT(e.line, 1);
  CHECK_INT(e.column, 9);
  rec_free(r);
}

MG_TEST(nul_and_utf8_in_label_values) {
  static const char body[] = "a{b=\"abc\0\"} 1\nc{d=\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"} 2\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(mg_parse(body, sizeof body - 1, MG_FMT_PROM_TEXT, &rec_cb, r, &e), 0);
  REQUIRE(r->ns == 2);
  CHECK_INT(r->s[0].labels[0].value.n, 4);
  CHECK_INT(r->s[1].labels[0].value.n, 9);
  const char *bad[] = {
      "a{b=\"\xff\"} 1\n",             /* never valid */
      "a{b=\"\xc0\xaf\"} 1\n",         /* overlong '/' */
      "a{b=\"\xe0\x80\xaf\"} 1\n",     /* overlong, 3 bytes */
      "a{b=\"\xed\xa0\x80\"} 1\n",     /* UTF-16 surrogate */
      "a{b=\"\xf4\x90\x80\x80\"} 1\n", /* above U+10FFFF */
      "a{b=\"\xc3\"} 1\n",             /* truncated sequence */
      "a{b=\"\\\xc3\"} 1\n",           /* truncated after a backslash */
      "a{b=\"\x80\"} 1\n",             /* lone continuation byte */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    CHECK_INT(run(bad[i], MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
    CHECK_STR(e.msg, "invalid UTF-8 in label value");
    CHECK_INT(run(bad[i], MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
    CHECK_STR(e.msg, "invalid UTF-8 in label value");
  }
  CHECK_INT(run("# HELP a bad \xff\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "invalid UTF-8 in HELP text");
  CHECK_INT(e.column, 14);
  CHECK_INT(run("# HELP a \xe2\x82\xac ok\n", MG_FMT_PROM_TEXT, r, &e), 0);
  rec_free(r);
}

/* Label values are scanned a word at a time: put every kind of special
 * byte at every offset of a word, and end the body right after a value. */
MG_TEST(label_value_scan_every_offset) {
  const char *specials[] = {"\\\"", "\\\\", "\xc3\xa9", "\xf0\x9f\x98\x80", "\\n"};
  char value[64], line[128];
  rec_t *r = rec_new();
  mg_parse_error_t e;
  for (size_t sp = 0; sp < sizeof specials / sizeof *specials; sp++) {
    for (size_t k = 0; k < 20; k++) {
      size_t w = 0;
      for (size_t i = 0; i < k; i++) value[w++] = (char)('a' + i % 26);
      w += (size_t)snprintf(value + w, sizeof value - w, "%s", specials[sp]);
      for (size_t i = 0; i < 19 - k; i++) value[w++] = 'z';
      value[w] = '\0';
      for (int om = 0; om < 2; om++) {
        int n = snprintf(line, sizeof line, "m{v=\"%s\",w=\"%s\"} 1\n%s", value, value, om ? "# EOF\n" : "");
        r->ns = 0;
        CHECK_INT(run_n(line, (size_t)n, om ? MG_FMT_OPENMETRICS : MG_FMT_PROM_TEXT, r, &e), 0);
        CHECK_INT(r->ns, 1);
      }
      /* Views need the body alive: parse the stack buffer itself. */
      int n = snprintf(line, sizeof line, "m{v=\"%s\"} 1", value);
      r->ns = 0;
      CHECK_INT(mg_parse(line, (size_t)n, MG_FMT_PROM_TEXT, &rec_cb, r, &e), 0);
      REQUIRE(r->ns == 1);
      CHECK_MEM(r->s[0].labels[0].value.p, r->s[0].labels[0].value.n, value, w);
      CHECK(r->s[0].labels[0].escaped == (specials[sp][0] == '\\'));
      /* The same value cut before its closing quote never reads past n. */
      size_t cut = strlen("m{v=\"") + w;
      CHECK_INT(run_n(line, cut, MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
      CHECK_STR(e.msg, "unterminated label value");
    }
  }
  /* Bytes that must stop the scan and fail, at every offset: a word-wise
   * scan that skipped them would accept the line. */
  const struct {
    const char *bytes;
    mg_parse_format_t fmt;
    const char *msg;
  } bad[] = {
      {"\xff", MG_FMT_PROM_TEXT, "invalid UTF-8 in label value"},
      {"\xc3z", MG_FMT_OPENMETRICS, "invalid UTF-8 in label value"},
      {"\n", MG_FMT_OPENMETRICS, "unterminated label value"},
  };
  for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
    for (size_t k = 0; k < 20; k++) {
      int n = snprintf(line, sizeof line, "m{v=\"%.*s%s%.*s\"} 1\n# EOF\n", (int)k, "abcdefghijklmnopqrstuvwxyz",
                       bad[b].bytes, (int)(19 - k), "zzzzzzzzzzzzzzzzzzzz");
      CHECK_INT(run_n(line, (size_t)n, bad[b].fmt, r, &e), MG_EPARSE);
      CHECK_STR(e.msg, bad[b].msg);
      CHECK_INT(e.column, strlen("m{v=\"") + k + 1);
    }
  }
  rec_free(r);
}

MG_TEST(same_series_same_bytes) {
  const char *body = "x{a=\"1\"} 1\nx{a=\"1\"} 2\nx{a=\"2\"} 3\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), 0);
  REQUIRE(r->ns == 3);
  CHECK(mg_str_eq(r->s[0].series, r->s[1].series));
  CHECK(!mg_str_eq(r->s[0].series, r->s[2].series));
  CHECK(r->s[0].series.p != r->s[1].series.p); /* views into the body, zero copy */
  CHECK(r->s[0].series.p == body);
  rec_free(r);
}

/* ---- duplicates and limits --------------------------------------------- */

static size_t make_labels_line(char *buf, size_t cap, size_t nlabels, long dup_of, mg_parse_format_t fmt) {
  size_t w = (size_t)snprintf(buf, cap, "m{");
  for (size_t i = 0; i < nlabels; i++) {
    long id = (dup_of >= 0 && i == nlabels - 1) ? dup_of : (long)i;
    w += (size_t)snprintf(buf + w, cap - w, "%sl%04ld=\"v\"", i ? "," : "", id);
  }
  w += (size_t)snprintf(buf + w, cap - w, "} 1\n%s", fmt == MG_FMT_OPENMETRICS ? "# EOF\n" : "");
  return w;
}

MG_TEST(duplicate_labels_and_limits) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("a{b=\"c\",b=\"d\"} 1\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "duplicate label name");
  CHECK_INT(e.column, 9);
  CHECK_INT(run("a{b=\"c\",b=\"d\"} 1\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "duplicate label name");
  CHECK_INT(run("a{__name__=\"x\"} 1\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK(e.msg && strstr(e.msg, "__name__"));
  CHECK_INT(e.column, 3);
  /* A different name that merely looks similar is fine. */
  CHECK_INT(run("a{__name_=\"x\",b=\"1\",bb=\"2\",b_=\"3\"} 1\n", MG_FMT_PROM_TEXT, r, &e), 0);

  static char buf[16384];
  /* Short sets compare all pairs; long ones go through the hash table. */
  size_t counts[] = {2, 3, 16, 17, 40, MG_PARSE_MAX_LABELS};
  for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
    for (int om = 0; om < 2; om++) {
      mg_parse_format_t fmt = om ? MG_FMT_OPENMETRICS : MG_FMT_PROM_TEXT;
      size_t n = make_labels_line(buf, sizeof buf, counts[k], -1, fmt);
      r->ns = 0;
      CHECK_INT(mg_parse(buf, n, fmt, &rec_cb, r, &e), 0);
      CHECK_INT(r->ns, 1);
      CHECK_INT(r->s[0].nlabels, counts[k]);
      n = make_labels_line(buf, sizeof buf, counts[k], 0, fmt);
      CHECK_INT(mg_parse(buf, n, fmt, &rec_cb, r, &e), MG_EPARSE);
      CHECK_STR(e.msg, "duplicate label name");
      n = make_labels_line(buf, sizeof buf, counts[k], (long)counts[k] - 2, fmt);
      CHECK_INT(mg_parse(buf, n, fmt, &rec_cb, r, &e), MG_EPARSE);
      CHECK_STR(e.msg, "duplicate label name");
      /* The error points at the repeated name: the last one on the line. */
      CHECK_INT(e.column, n - (om ? 6 : 0) - strlen("} 1\n") - strlen("l0000=\"v\"") + 1);
    }
  }
  size_t n = make_labels_line(buf, sizeof buf, MG_PARSE_MAX_LABELS + 1, -1, MG_FMT_PROM_TEXT);
  CHECK_INT(mg_parse(buf, n, MG_FMT_PROM_TEXT, &rec_cb, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "too many labels");
  rec_free(r);
}

/* Names are scanned sixteen bytes at a time where SSE2 exists: every
 * length around the block size, every byte class, and a stop byte at every
 * position must give the same views as a byte-wise scan. */
MG_TEST(name_scan_every_length) {
  static const char mchars[] = "abzAZ09_:yY";
  static const char lchars[] = "abzAZ09_yY";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  char body[256], mn[64], ln[64];
  for (size_t len = 1; len <= 48; len++) {
    for (size_t i = 0; i < len; i++) {
      mn[i] = i ? mchars[i % (sizeof mchars - 1)] : 'm';
      ln[i] = i ? lchars[i % (sizeof lchars - 1)] : 'l';
    }
    int n = snprintf(body, sizeof body, "%.*s{%.*s=\"v\"} 1\n", (int)len, mn, (int)len, ln);
    r->ns = 0;
    CHECK_INT(mg_parse(body, (size_t)n, MG_FMT_PROM_TEXT, &rec_cb, r, &e), 0);
    REQUIRE(r->ns == 1);
    CHECK_INT(r->s[0].name.n, len);
    CHECK_INT(r->s[0].labels[0].name.n, len);
    /* A byte outside the class ends the name wherever it stands. */
    for (size_t at = 1; at < len; at++) {
      static const char stops[] = {'-', '@', '[', '`', '{', '~', (char)0xc3, (char)0xff, '/'};
      for (size_t k = 0; k < sizeof stops; k++) {
        char bad[64];
        memcpy(bad, ln, len);
        bad[at] = stops[k];
        n = snprintf(body, sizeof body, "m{%.*s=\"v\"} 1\n", (int)len, bad);
        CHECK_INT(mg_parse(body, (size_t)n, MG_FMT_PROM_TEXT, &rec_cb, r, &e), MG_EPARSE);
        CHECK_INT(e.column, 3 + at);
      }
    }
  }
  rec_free(r);
}

/* The sorted flag: strictly rising names in body order, in both formats
 * and with blanks between tokens; equal or falling neighbours clear it. */
MG_TEST(sorted_flag) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  struct {
    const char *body;
    bool sorted;
  } cases[] = {
      {"m 1\n", true},
      {"m{} 1\n", true},
      {"m{a=\"1\"} 1\n", true},
      {"m{a=\"1\",b=\"2\",bb=\"3\",c=\"4\"} 1\n", true},
      {"m{ a = \"1\" , b = \"2\" } 1\n", true},
      {"m{b=\"1\",a=\"2\"} 1\n", false},
      {"m{bb=\"1\",b=\"2\"} 1\n", false},
      {"m{a=\"1\",le=\"2\",code=\"3\"} 1\n", false},
      {"m{B=\"1\",a=\"2\"} 1\n", true}, /* byte order: 'B' < 'a' */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    r->ns = 0;
    CHECK_INT(run(cases[i].body, MG_FMT_PROM_TEXT, r, &e), 0);
    CHECK_INT(r->ns, 1);
    CHECK_INT(r->s[0].sorted, cases[i].sorted);
  }
  r->ns = 0;
  CHECK_INT(run("m{a=\"1\",b=\"2\"} 1\nm{b=\"1\",a=\"2\"} 1\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), 0);
  CHECK_INT(r->ns, 2);
  CHECK(r->s[0].sorted && !r->s[1].sorted);
  rec_free(r);
}

/* ---- callbacks --------------------------------------------------------- */

MG_TEST(callback_abort_propagates) {
  const char *body = "# HELP a x\na 1\nb 2\nc 3\n";
  rec_t *r = rec_new();
  mg_parse_error_t e;
  r->stop_sample_at = 2;
  r->stop_rc = MG_ECANCELED;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), MG_ECANCELED);
  CHECK_INT(r->ns, 2);
  rec_free(r);
  r = rec_new();
  r->stop_meta_at = 1;
  r->stop_rc = MG_EFULL;
  CHECK_INT(run(body, MG_FMT_PROM_TEXT, r, &e), MG_EFULL);
  CHECK_INT(r->ns, 0);
  rec_free(r);
  r = rec_new();
  r->stop_sample_at = 1;
  r->stop_rc = MG_ETOOBIG;
  CHECK_INT(run("# TYPE a gauge\na 1\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_ETOOBIG);
  rec_free(r);
  /* No callbacks at all: validation only. No error struct: still safe. */
  CHECK_INT(mg_parse(body, strlen(body), MG_FMT_PROM_TEXT, NULL, NULL, NULL), 0);
  CHECK_INT(mg_parse("a{", 2, MG_FMT_PROM_TEXT, NULL, NULL, NULL), MG_EPARSE);
  mg_parse_callbacks_t only_samples = {rec_on_sample, NULL};
  r = rec_new();
  CHECK_INT(mg_parse(body, strlen(body), MG_FMT_PROM_TEXT, &only_samples, r, &e), 0);
  CHECK_INT(r->ns, 3);
  rec_free(r);
}

/* ---- OpenMetrics ------------------------------------------------------- */

MG_TEST(openmetrics_full) {
  const char *body =
      "# HELP go_gc_duration_seconds A summary of the GC invocation durations.\n"
      "# TYPE go_gc_duration_seconds summary\n"
      "# UNIT go_gc_duration_seconds seconds\n"
      "go_gc_duration_seconds{quantile=\"0\"} 4.9351e-05\n"
      "go_gc_duration_seconds{quantile=\"0.5\",a=\"b\"} 8.3835e-05\n"
      "# HELP nohelp1 \n"
      "# HELP help2 escape \\ \\n \\\\ \\\" \\x chars\n"
      "# UNIT nounit \n"
      "go_goroutines 33 123.123\n"
      "# TYPE hh histogram\n"
      "hh_bucket{le=\"+Inf\"} 1 # {id=\"histogram-bucket-test\"} 4\n"
      "# TYPE ggh gaugehistogram\n"
      "ggh_bucket{le=\"+Inf\"} 1 # {id=\"gaugehistogram-bucket-test\",xx=\"yy\"} 4 123.123\n"
      "smr_seconds_count 2.0 # {id=\"summary-count-test\"} 1 123.321\n"
      "# TYPE ii info\n"
      "ii{foo=\"bar\"} 1\n"
      "# TYPE ss stateset\n"
      "ss{ss=\"foo\"} 1\n"
      "# TYPE un unknown\n"
      "# TYPE c counter\n"
      "# TYPE g gauge\n"
      "foo_total 17.0 1520879607.789 # {id=\"counter-test\"} 5\n"
      "foo_total{a=\"b\",} 17.0 1520879607.789 # {} 5\n"
      "empty{} 1\n"
      "# EOF\n";
  rec_t *r = rec_new();
  mg_parse_error_t e = {0};
  CHECK_INT(run(body, MG_FMT_OPENMETRICS, r, &e), 0);
  if (e.msg) fprintf(stderr, "  parse error line %u col %u: %s\n", e.line, e.column, e.msg);
  REQUIRE(r->ns == 11);
  CHECK_VIEW(r->s[0].series, "go_gc_duration_seconds{quantile=\"0\"}");
  CHECK_DBL(r->s[0].value, 4.9351e-05);
  CHECK_VIEW(r->s[2].series, "go_goroutines");
  CHECK(r->s[2].has_ts);
  CHECK_INT(r->s[2].ts, 123123);
  CHECK_VIEW(r->s[3].series, "hh_bucket{le=\"+Inf\"}");
  CHECK(!r->s[3].has_ts);
  CHECK_DBL(r->s[3].value, 1);
  CHECK_DBL(r->s[4].value, 1);
  CHECK(!r->s[4].has_ts); /* the exemplar's timestamp is not the sample's */
  CHECK_DBL(r->s[5].value, 2);
  CHECK_VIEW(r->s[6].labels[0].value, "bar");
  CHECK_INT(r->s[8].ts, 1520879607789LL);
  CHECK_INT(r->s[9].ts, 1520879607789LL);
  CHECK_INT(r->s[9].nlabels, 1);
  CHECK_VIEW(r->s[9].series, "foo_total{a=\"b\",}");
  CHECK_VIEW(r->s[10].series, "empty{}");
  CHECK_INT(r->s[10].nlabels, 0);
  CHECK_INT(r->s[10].line, 24);
  REQUIRE(r->nm == 13);
  CHECK_INT(r->m[2].kind, MG_META_UNIT);
  CHECK_VIEW(r->m[2].family, "go_gc_duration_seconds");
  CHECK_VIEW(r->m[2].text, "seconds");
  CHECK_INT(r->m[3].text.n, 0);
  char out[64];
  size_t n = mg_parse_unescape_help(r->m[4].text, MG_FMT_OPENMETRICS, out);
  CHECK_MEM(out, n, "escape \\ \n \\ \" \\x chars", strlen("escape \\ \n \\ \" \\x chars"));
  CHECK_INT(r->m[5].kind, MG_META_UNIT);
  CHECK_INT(r->m[5].text.n, 0);
  CHECK_INT(r->m[6].type, MG_MTYPE_HISTOGRAM);
  CHECK_INT(r->m[7].type, MG_MTYPE_GAUGEHISTOGRAM);
  CHECK_INT(r->m[8].type, MG_MTYPE_INFO);
  CHECK_INT(r->m[9].type, MG_MTYPE_STATESET);
  CHECK_INT(r->m[10].type, MG_MTYPE_UNKNOWN);
  CHECK_INT(r->m[11].type, MG_MTYPE_COUNTER);
  CHECK_INT(r->m[12].type, MG_MTYPE_GAUGE);
  CHECK_INT(r->m[12].line, 21);
  rec_free(r);
}

MG_TEST(openmetrics_timestamps_seconds_to_ms) {
  struct {
    const char *ts;
    int64_t ms;
  } cases[] = {
      {"1", 1000},           {"1.5", 1500},       {"-1.5", -1500},
      {"0.0005", 0},         {"-0.0005", 0},      {"1e3", 1000000},
      {"123.321", 123321},   {"0", 0},            {"1520879607.789", 1520879607789LL},
      {"1.001", 1000}, /* 1.001 * 1000 is 1000.9999999999999 in doubles; Go truncates */
      {"1e15", 1000000000000000000LL},           {"-9.2e15", -9200000000000000000LL},
  };
  rec_t *r = rec_new();
  mg_parse_error_t e;
  char body[128];
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    int n = snprintf(body, sizeof body, "a 1 %s\n# EOF\n", cases[i].ts);
    r->ns = 0;
    CHECK_INT(mg_parse(body, (size_t)n, MG_FMT_OPENMETRICS, &rec_cb, r, &e), 0);
    REQUIRE(r->ns == 1);
    CHECK(r->s[0].has_ts);
    CHECK_INT(r->s[0].ts, cases[i].ms);
  }
  /* 9223372036854776 s is 2^63 ms: outside int64. */
  const char *bad[] = {"NaN", "-Inf", "Inf", "1e30", "9223372036854776", "1z", "1_0"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int n = snprintf(body, sizeof body, "a 1 %s\n# EOF\n", bad[i]);
    CHECK_INT(mg_parse(body, (size_t)n, MG_FMT_OPENMETRICS, &rec_cb, r, &e), MG_EPARSE);
    CHECK_STR(e.msg, "invalid timestamp");
    CHECK_INT(e.column, 5);
  }
  rec_free(r);
}

MG_TEST(openmetrics_eof_rules) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("# EOF", MG_FMT_OPENMETRICS, r, &e), 0);
  CHECK_INT(run("# EOF\n", MG_FMT_OPENMETRICS, r, &e), 0);
  CHECK_INT(run("a 1\n# EOF", MG_FMT_OPENMETRICS, r, &e), 0);
  CHECK_INT(run("", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "missing # EOF");
  CHECK_INT(run("a 1\nb 2\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "missing # EOF");
  CHECK_INT(e.line, 3);
  CHECK_INT(e.column, 1);
  CHECK_INT(run("# EOF\n\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "unexpected data after # EOF");
  CHECK_INT(e.line, 2);
  CHECK_INT(run("# EOF\na 1", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "unexpected data after # EOF");
  CHECK_INT(run("# EOF ", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "unexpected data after # EOF");
  /* A text body is not OpenMetrics: comments and blank lines are errors. */
  CHECK_INT(run("# just a comment\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_INT(run("a 1\n\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK(e.msg && strstr(e.msg, "empty line"));
  CHECK_INT(e.line, 2);
  /* The text parser takes "# EOF" as a plain comment. */
  CHECK_INT(run("a 1\n# EOF\nb 2\n", MG_FMT_PROM_TEXT, r, &e), 0);
  rec_free(r);
}

MG_TEST(exemplars_skipped_in_openmetrics_only) {
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("a_total 1 # {trace_id=\"abc\\\"\",span=\"\xc3\xa9\"} 0.5 1.25\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), 0);
  CHECK_INT(r->ns, 1);
  CHECK_INT(r->s[0].nlabels, 0);
  CHECK(!r->s[0].has_ts);
  CHECK_INT(run("a_total 1 # {a=\"b\"} 1\n", MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_INT(run("a_total 1 # {a=\"\xff\"} 1\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "invalid UTF-8 in label value");
  CHECK_INT(run("a_total 1 # {a=\"b\"} NaN\n# EOF\n", MG_FMT_OPENMETRICS, r, &e), 0);
  rec_free(r);
}

/* ---- every error message with its position ------------------------------ */

typedef struct errcase {
  mg_parse_format_t fmt;
  const char *in;
  uint32_t line, col;
  const char *msg;
} errcase_t;

#define T MG_FMT_PROM_TEXT
#define O MG_FMT_OPENMETRICS
static const errcase_t errcases[] = {
    {T, "a", 1, 2, "expected value after metric"},
    {T, "a{b='c'} 1\n", 1, 5, "expected '\"' to open label value"},
    {T, "a{b=\n", 1, 5, "expected '\"' to open label value"},
    {T, "a{b\n=\"c\"} 1\n", 1, 4, "expected '=' after label name"},
    {T, "a{\xff=\"foo\"} 1\n", 1, 3, "invalid label name"},
    {T, "a{b=\"\xff\"} 1\n", 1, 6, "invalid UTF-8 in label value"},
    {T, "a true\n", 1, 3, "invalid float value"},
    {T, "something_weird{problem=\"", 1, 25, "unterminated label value"},
    {T, "empty_label_name{=\"\"} 0", 1, 18, "invalid label name"},
    {T, "foo 1_2\n", 1, 5, "invalid float value"},
    {T, "foo 0x1p-3\n", 1, 5, "invalid float value"},
    {T, "foo 0 1_2\n", 1, 8, "unexpected text after timestamp"},
    {T, "{a=\"ok\"} 1", 1, 1, "invalid metric name"},
    {T, "ok 1\n9lives 1\n", 2, 1, "invalid metric name"},
    {T, "# TYPE #\n", 1, 8, "expected metric name after TYPE"},
    {T, "# HELP #\n", 1, 8, "expected metric name after HELP"},
    {T, "# HELP \n", 1, 8, "expected metric name after HELP"},
    {T, "# TYPE foo counters\n", 1, 12, "invalid metric type"},
    {T, "# TYPE foo  counter\n", 1, 12, "invalid metric type"},
    {T, "a 1 -5\n", 1, 5, "expected timestamp or newline after value"},
    {T, "a 1 {\n", 1, 5, "expected timestamp or newline after value"},
    {T, "a 1 99999999999999999999\n", 1, 5, "timestamp out of range"},
    {T, "a 1 2 3\n", 1, 7, "unexpected text after timestamp"},
    {T, "a{b=\"c\",,d=\"e\"} 1\n", 1, 9, "invalid label name"},
    {T, "a{b=\"c\\\n\"} 1\n", 1, 7, "invalid escape in label value"},
    {T, "a{b=\"c\\", 1, 5, "unterminated label value"},
    {T, "a{b=\"c\"", 1, 8, "unterminated label set"},
    {O, "a{", 1, 3, "unterminated label set"},
    {T, "ok 1\nok 2\n  bad{ 1\n", 3, 8, "invalid label name"},
    {T, "a{b=\"c\",b=\"d\"} 1\n", 1, 9, "duplicate label name"},
    {T, "a{b=\"x\ny\",b=\"d\"} 1\n", 2, 4, "duplicate label name"},
    {T, "a{} \n", 1, 5, "expected value after metric"},
    {O, "", 1, 1, "missing # EOF"},
    {O, "\n", 1, 1, "empty line (not allowed in OpenMetrics)"},
    {O, "metric", 1, 7, "expected value after metric"},
    {O, "metric 1", 1, 9, "missing # EOF"},
    {O, "metric 1\n", 2, 1, "missing # EOF"},
    {O, "metric_total 1 # {aa=\"bb\"} 4", 1, 29, "missing # EOF"},
    {O, "a\n# EOF\n", 1, 2, "expected value after metric"},
    {O, " a 1\n# EOF\n", 1, 1, "invalid metric name"},
    {O, "9\n# EOF\n", 1, 1, "invalid metric name"},
    {O, "{b=\"c\",} 1\n# EOF\n", 1, 1, "invalid metric name"},
    {O, "# TYPE u untyped\n# EOF\n", 1, 10, "invalid metric type"},
    {O, "# TYPE c counter \n# EOF\n", 1, 10, "invalid metric type"},
    {O, "# TYPE c  counter\n# EOF\n", 1, 10, "invalid metric type"},
    {O, "#  TYPE c counter\n# EOF\n", 1, 3, "expected HELP, TYPE, UNIT or EOF after '# '"},
    {O, "# foo\n# EOF\n", 1, 3, "expected HELP, TYPE, UNIT or EOF after '# '"},
    {O, "#\tTYPE c counter\n", 1, 1, "expected '# HELP', '# TYPE', '# UNIT' or '# EOF'"},
    {O, "#", 1, 1, "expected '# HELP', '# TYPE', '# UNIT' or '# EOF'"},
    {O, "# TYPE \n# EOF\n", 1, 8, "expected metric name after TYPE"},
    {O, "# UNIT \n# EOF\n", 1, 8, "expected metric name after UNIT"},
    {O, "# HELP \n# EOF\n", 1, 8, "expected metric name after HELP"},
    {O, "# TYPE m\n# EOF\n", 1, 9, "expected ' ' after metric name"},
    {O, "# HELP m\n# EOF\n", 1, 9, "expected ' ' after metric name"},
    {O, "# HELP m text", 1, 14, "missing # EOF"},
    {O, "# UNIT metric suffix\n# EOF\n", 1, 15, "unit is not a suffix of the metric name"},
    {O, "# UNIT metricsuffix suffix\n# EOF\n", 1, 21, "unit is not a suffix of the metric name"},
    {O, "# UNIT m suffix\n# EOF\n", 1, 10, "unit is not a suffix of the metric name"},
    {O, "# HELP m \xc3\x28\n# EOF\n", 1, 10, "invalid UTF-8 in HELP text"},
    {O, "a\t1\n# EOF\n", 1, 2, "expected value after metric"},
    {O, "a  1\n# EOF\n", 1, 3, "expected value after metric"},
    {O, "a{b=\"c\"}\n# EOF\n", 1, 9, "expected value after metric"},
    {O, "a 1\t2\n# EOF\n", 1, 3, "invalid float value"},
    {O, "a 1 \n# EOF\n", 1, 5, "expected timestamp or exemplar after value"},
    {O, "a 1 2 \n# EOF\n", 1, 7, "expected exemplar or newline after timestamp"},
    {O, "a 1 2 #\n# EOF\n", 1, 7, "expected exemplar or newline after timestamp"},
    {O, "a 1 1 1\n# EOF\n", 1, 7, "expected exemplar or newline after timestamp"},
    {O, "a 1 1z\n# EOF\n", 1, 5, "invalid timestamp"},
    {O, " # EOF\n", 1, 1, "invalid metric name"},
    {O, "# EOFa 1", 1, 6, "unexpected data after # EOF"},
    {O, "a{b='c'} 1\n# EOF\n", 1, 5, "expected '\"' to open label value"},
    {O, "a{,b=\"c\"} 1\n# EOF\n", 1, 3, "invalid label name"},
    {O, "a{ b=\"c\"} 1\n# EOF\n", 1, 3, "invalid label name"},
    {O, "a{b =\"c\"} 1\n# EOF\n", 1, 4, "expected '=' after label name"},
    {O, "a{b=\"c\"d=\"e\"} 1\n# EOF\n", 1, 8, "expected ',' or '}' after label value"},
    {O, "a{b=\"c\" } 1\n# EOF\n", 1, 8, "expected ',' or '}' after label value"},
    {O, "a{b=\"c\",,d=\"e\"} 1\n# EOF\n", 1, 9, "invalid label name"},
    {O, "a{b=\n# EOF\n", 1, 5, "expected '\"' to open label value"},
    {O, "something_weird{problem=\"\n# EOF\n", 1, 26, "unterminated label value"},
    {O, "custom_metric_total 1 # {aa=bb}\n# EOF\n", 1, 29, "expected '\"' to open label value"},
    {O, "custom_metric_total 1 # {aa=\"bb\"}\n# EOF\n", 1, 34, "expected value after exemplar labels"},
    {O, "custom_metric_total 1 # {aa=\"bb\"}", 1, 34, "missing # EOF"},
    {O, "custom_metric_total 1 # {bb}\n# EOF\n", 1, 28, "expected '=' after label name"},
    {O, "custom_metric_total 1 # {aa=\"bb\"} 1_2\n# EOF\n", 1, 35, "invalid exemplar value"},
    {O, "custom_metric_total 1 # {aa=\"bb\"} \n# EOF\n", 1, 35, "expected value after exemplar labels"},
    {O, "custom_metric_total 1 # {aa=\"bb\"} 1 NaN\n# EOF\n", 1, 37, "invalid exemplar timestamp"},
    {O, "custom_metric_total 1 # {aa=\"bb\"} 1 \n# EOF\n", 1, 37, "expected timestamp or newline after exemplar value"},
    {O, "custom_metric_total 1 # {aa=\"bb\"} 1 2 3\n# EOF\n", 1, 38, "expected newline after exemplar"},
    {O, "a 1\r\n# EOF\n", 1, 4, "carriage return before newline (CRLF line endings are not allowed)"},
    {O, "# TYPE a gauge\r\n# EOF\n", 1, 15, "carriage return before newline (CRLF line endings are not allowed)"},
    {O, "a{b=\"c\",b=\"d\"} 1\n# EOF\n", 1, 9, "duplicate label name"},
    {O, "ok 1\nok 2 3 # {a=\"b\"} 1\nbad\n# EOF\n", 3, 4, "expected value after metric"},
};
#undef T
#undef O

MG_TEST(error_messages_and_positions) {
  rec_t *r = rec_new();
  for (size_t i = 0; i < sizeof errcases / sizeof *errcases; i++) {
    const errcase_t *c = &errcases[i];
    mg_parse_error_t e = {0};
    int rc = run_n(c->in, strlen(c->in), c->fmt, r, &e);
    if (rc != MG_EPARSE || !e.msg || strcmp(e.msg, c->msg) != 0 || e.line != c->line || e.column != c->col) {
      MG_FAIL_("case %zu (%s) %s: got rc=%d line=%u col=%u msg=\"%s\"; want line=%u col=%u msg=\"%s\"", i,
               c->fmt == MG_FMT_OPENMETRICS ? "om" : "text", c->in, rc, e.line, e.column, e.msg ? e.msg : "(null)",
               c->line, c->col, c->msg);
    }
  }
  /* A NUL byte is data, not a terminator. */
  static const char nul_value[] = "a\0{b=\"ddd\"} 1";
  mg_parse_error_t e = {0};
  CHECK_INT(run_n(nul_value, sizeof nul_value - 1, MG_FMT_PROM_TEXT, r, &e), MG_EPARSE);
  CHECK_STR(e.msg, "invalid float value");
  CHECK_INT(e.column, 2);
  rec_free(r);
}

/* ---- truncated bodies ----------------------------------------------------- */

static const char *trunc_text_body =
    "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n"
    "# TYPE node_cpu_seconds_total counter\n"
    "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 123456.78\n"
    "node_cpu_seconds_total{cpu=\"0\",mode=\"user\", } 9.5e+03 1700000000000\n"
    "  esc{a=\"x\\\"y\\\\z\\n\",b=\"\xc3\xa9\"} -Inf\n"
    "# random comment\n"
    "\n"
    "plain NaN\n";

static const char *trunc_om_body =
    "# HELP foo Help \\\" text.\n"
    "# TYPE foo counter\n"
    "# UNIT foo_seconds seconds\n"
    "foo_total{a=\"b\",c=\"\xe2\x82\xac\"} 17.0 1520879607.789 # {id=\"x\"} 5 1.5\n"
    "foo_created 1520872607.123\n"
    "bar{le=\"+Inf\"} 1 # {} 1\n"
    "# EOF\n";

static bool same_sample(const rec_sample_t *a, const rec_sample_t *b) {
  if (!mg_str_eq(a->series, b->series) || a->nlabels != b->nlabels || a->has_ts != b->has_ts) return false;
  if (bits_of(a->value) != bits_of(b->value) || (a->has_ts && a->ts != b->ts)) return false;
  for (size_t i = 0; i < a->nlabels; i++)
    if (!mg_str_eq(a->labels[i].name, b->labels[i].name) || !mg_str_eq(a->labels[i].value, b->labels[i].value))
      return false;
  return true;
}

/* Cut `full` at every byte offset. With want_ok the whole body must parse
 * and every cut must give a correct prefix or a clean error; without, only
 * clean outcomes are required (the body is in the other format). */
static void check_truncations(const char *full, mg_parse_format_t fmt, bool want_ok) {
  size_t len = strlen(full);
  rec_t *ref = rec_new(), *r = rec_new();
  mg_parse_error_t e;
  int full_rc = mg_parse(full, len, fmt, &rec_cb, ref, &e);
  if (want_ok) {
    CHECK_INT(full_rc, 0);
    CHECK(ref->ns > 0);
  }
  for (size_t cut = 0; cut <= len; cut++) {
    char *copy = malloc(cut ? cut : 1);
    memcpy(copy, full, cut);
    r->ns = r->nm = 0;
    memset(&e, 0, sizeof e);
    int rc = mg_parse(copy, cut, fmt, &rec_cb, r, &e);
    if (rc != 0 && rc != MG_EPARSE) MG_FAIL_("cut %zu: rc %d", cut, rc);
    if (rc == MG_EPARSE && (!e.msg || e.line == 0 || e.column == 0)) MG_FAIL_("cut %zu: incomplete error", cut);
    if (want_ok) {
      if (r->ns > ref->ns) MG_FAIL_("cut %zu: %zu samples > %zu", cut, r->ns, ref->ns);
      /* Every sample but the last must be the reference's; the last may
       * have lost digits of its value or timestamp to the cut. */
      for (size_t i = 0; i + 1 < r->ns && i < ref->ns; i++)
        if (!same_sample(&r->s[i], &ref->s[i])) MG_FAIL_("cut %zu: sample %zu differs", cut, i);
      if (fmt == MG_FMT_OPENMETRICS && rc == 0 && cut + 1 < len)
        MG_FAIL_("cut %zu: OpenMetrics without # EOF accepted", cut);
    }
    free(copy);
  }
  rec_free(ref);
  rec_free(r);
}

MG_TEST(truncated_bodies) {
  check_truncations(trunc_text_body, MG_FMT_PROM_TEXT, true);
  check_truncations(trunc_om_body, MG_FMT_OPENMETRICS, true);
  /* Each body through the other format as well: only clean outcomes. */
  check_truncations(trunc_om_body, MG_FMT_PROM_TEXT, false);
  check_truncations(trunc_text_body, MG_FMT_OPENMETRICS, false);
}

/* ---- a realistic body ------------------------------------------------------ */

MG_TEST(node_exporter_like_body) {
  static char body[1 << 20];
  size_t w = 0;
  const char *modes[] = {"idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"};
  w += (size_t)snprintf(body + w, sizeof body - w,
                        "# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.\n"
                        "# TYPE go_gc_duration_seconds summary\n"
                        "go_gc_duration_seconds{quantile=\"0\"} 2.4349e-05\n"
                        "go_gc_duration_seconds{quantile=\"1\"} 0.000212396\n"
                        "go_gc_duration_seconds_sum 0.043104052\n"
                        "go_gc_duration_seconds_count 372\n"
                        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n"
                        "# TYPE node_cpu_seconds_total counter\n");
  for (int cpu = 0; cpu < 64; cpu++)
    for (int m = 0; m < 8; m++)
      w += (size_t)snprintf(body + w, sizeof body - w, "node_cpu_seconds_total{cpu=\"%d\",mode=\"%s\"} %d.%02d\n", cpu,
                            modes[m], cpu * 1000 + m, m * 7);
  w += (size_t)snprintf(
      body + w, sizeof body - w,
      "# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.\n"
      "# TYPE node_filesystem_avail_bytes gauge\n"
      "node_filesystem_avail_bytes{device=\"/dev/nvme0n1p1\",fstype=\"ext4\",mountpoint=\"/\"} 4.2318923776e+10\n"
      "node_filesystem_avail_bytes{device=\"tmpfs\",fstype=\"tmpfs\",mountpoint=\"/run\"} 1.6765e+09\n"
      "# HELP node_uname_info Labeled system information as provided by the uname system call.\n"
      "# TYPE node_uname_info gauge\n"
      "node_uname_info{domainname=\"(none)\",machine=\"x86_64\",nodename=\"ip-10-0-0-5\",release=\"6.1.0-18-cloud-amd64\","
      "sysname=\"Linux\",version=\"#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\"} 1\n"
      "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
      "# TYPE process_start_time_seconds gauge\n"
      "process_start_time_seconds 1.70981734217e+09\n"
      "node_scrape_collector_success{collector=\"cpu\"} 1\n");
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(mg_parse(body, w, MG_FMT_PROM_TEXT, &rec_cb, r, &e), 0);
  CHECK_INT(r->ns, 4 + 512 + 2 + 1 + 1 + 1);
  CHECK_INT(r->nm, 10);
  CHECK_DBL(r->s[0].value, 2.4349e-05);
  CHECK_DBL(r->s[3].value, 372);
  CHECK_VIEW(r->s[4 + 8 * 5 + 6].series, "node_cpu_seconds_total{cpu=\"5\",mode=\"system\"}");
  CHECK_DBL(r->s[4 + 8 * 5 + 6].value, 5006.42);
  CHECK_DBL(r->s[516].value, 4.2318923776e+10);
  CHECK_INT(r->s[518].nlabels, 6);
  CHECK_VIEW(r->s[518].labels[5].value, "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)");
  CHECK_DBL(r->s[519].value, 1.70981734217e+09);
  CHECK_INT(r->s[520].line, 531);
  rec_free(r);
}

/* ---- floats ----------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void) { /* xorshift64*: reproducible across runs */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}

/* strtod on a whole token; returns false if it does not consume all of it. */
static bool ref_strtod(const char *s, double *out) {
  char *endp;
  *out = strtod(s, &endp);
  return *s && *endp == '\0';
}

static int check_against_strtod(const char *s) {
  double want, got;
  bool ok = ref_strtod(s, &want);
  int rc = mg_parse_float(s, strlen(s), &got);
  if (!ok) {
    MG_FAIL_("strtod rejects generated \"%s\"", s);
    return 1;
  }
  if (isinf(want)) { /* overflow: Go's ErrRange, Prometheus rejects */
    if (rc != MG_EPARSE) {
      MG_FAIL_("\"%s\": overflow accepted", s);
      return 1;
    }
    return 0;
  }
  if (rc != 0 || bits_of(got) != bits_of(want)) {
    MG_FAIL_("\"%s\": rc=%d got %a want %a", s, rc, got, want);
    return 1;
  }
  return 0;
}

MG_TEST(float_random_vs_strtod) {
  setlocale(LC_NUMERIC, "C");
  char s[128];
  int failures = 0;
  size_t total = 0;
  /* 1) Random decimal shapes: signs, leading zeros, long mantissas, dots
   *    anywhere, exponents across the whole double range and beyond. */
  for (int i = 0; i < 60000 && failures < 20; i++) {
    size_t w = 0;
    uint64_t x = rnd();
    if (x & 1) s[w++] = (x & 2) ? '-' : '+';
    int nint = (int)(rnd() % 22), nfrac = (int)(rnd() % 22);
    bool dot = rnd() % 3 != 0;
    if (nint == 0 && (!dot || nfrac == 0)) nint = 1;
    for (int k = 0; k < nint; k++) s[w++] = (char)('0' + (k == 0 && rnd() % 4 == 0 ? 0 : rnd() % 10));
    if (dot) {
      s[w++] = '.';
      for (int k = 0; k < nfrac; k++) s[w++] = (char)('0' + rnd() % 10);
    }
    if (rnd() % 2) {
      s[w++] = rnd() % 2 ? 'e' : 'E';
      int ex = (int)(rnd() % 700) - 350;
      if (rnd() % 8 == 0) ex = (int)(rnd() % 50) - 25;
      w += (size_t)snprintf(s + w, sizeof s - w, "%s%d", ex >= 0 && rnd() % 2 ? "+" : "", ex);
    }
    s[w] = '\0';
    failures += check_against_strtod(s);
    total++;
  }
  /* 2) Random doubles in the notations exporters print (Go's 'g' -1 gives
   *    up to 17 digits; C printf variants cover the rest). */
  const char *fmts[] = {"%.17g", "%.16g", "%.15g", "%g", "%.3f", "%.9e", "%.0f", "%.1f"};
  for (int i = 0; i < 48000 && failures < 20; i++) {
    uint64_t b = rnd();
    double d;
    if (i % 2) { /* typical magnitudes */
      d = (double)(rnd() % 100000000) / (double)(1 + rnd() % 100000);
    } else {
      memcpy(&d, &b, sizeof d);
      if (!isfinite(d)) continue;
    }
    const char *f = fmts[i % 8];
    if ((i % 8 >= 4) && fabs(d) > 1e30) f = "%.17g";
    snprintf(s, sizeof s, f, d);
    failures += check_against_strtod(s);
    total++;
  }
  /* 3) Integers of every length, around 2^53 and 2^64. */
  for (int i = 0; i < 8000 && failures < 20; i++) {
    uint64_t v = rnd() >> (rnd() % 64);
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    failures += check_against_strtod(s);
    total++;
  }
  /* 4) Long mantissas with moderate exponents: the values Go prints with
   *    16-19 digits, past Clinger's 2^53 bound. */
  for (int i = 0; i < 60000 && failures < 20; i++) {
    uint64_t m = rnd() % 10000000000000000000ULL;
    int ex = (int)(rnd() % 61) - 30;
    snprintf(s, sizeof s, "%llue%d", (unsigned long long)m, ex);
    failures += check_against_strtod(s);
    total++;
  }
  CHECK(total >= 100000);
  CHECK_INT(failures, 0);
}

MG_TEST(float_hand_picked) {
  setlocale(LC_NUMERIC, "C");
  const char *good[] = {
      "0", "-0", "+0", "0.0", ".5", "5.", "-.5e-3", "007", "1e23", "8.98846567431158e307",
      "9007199254740992", "9007199254740993", "9007199254740995", "18446744073709551615", "18446744073709551616",
      "1.7976931348623157e308", "1.7976931348623158e308", "4.9406564584124654e-324", "2.4703282292062327e-324",
      "2.4703282292062328e-324", "2.2250738585072011e-308", "2.2250738585072014e-308", "0.1", "0.30000000000000004",
      "123456789012345678901234567890", "1e22", "1e-22", "123e25", "9007199254740991e15", "9007199254740993e15",
      "0.000000000000000000000000000000000000001", "1E5", "1e+05", "1e-0", "3.14159265358979323846264338327950288",
      "100000000000000000000000", "1.00000000000000011102230246251565404236316680908203125",
      /* 2^54+2 is a midpoint between doubles, reached exactly by 64-bit
       * division; the second one lies just above it. */
      "180143985094819860e-1", "180143985094819860.1e-1", "9999999999999999999e27", "9999999999999999999e-27",
      "7.424100000000001e-05", "0.043104052000000001",
      /* Their product or quotient rounded to 64 bits lands exactly on a
       * midpoint between doubles although the true value does not: rounding
       * that again would go the wrong way, so these must reach strtod. */
      "7103635549172574555e10", "7030521072899646828e23", "3872312348450203240e-10", "4848031258970785227e16",
      "7434049568653262554e-16", "6037253928853264332e-9",
      "1.00000000000000011102230246251565404236316680908203124", "7.2057594037927933e16", "1.5e-7",
  };
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) check_against_strtod(good[i]);

  /* Halfway cases need every digit: one past 800 digits decides them. */
  static char big[2048];
  size_t w = 0;
  w += (size_t)snprintf(big, sizeof big, "1.00000000000000011102230246251565404236316680908203125");
  while (w < 1200) big[w++] = '0';
  big[w++] = '1';
  big[w] = '\0';
  check_against_strtod(big);
  big[w - 1] = '0';
  check_against_strtod(big);
  /* Thousands of leading zeros before the first significant digit. */
  w = (size_t)snprintf(big, sizeof big, "0.");
  while (w < 1500) big[w++] = '0';
  w += (size_t)snprintf(big + w, sizeof big - w, "17e1400");
  check_against_strtod(big);

  const char *bad[] = {"", "+", "-", ".", "e5", ".e5", "1e", "1e+", "1e-", "1.2.3", "1..2", "--1", "+-1", "1 ",
                       " 1", "1_000", "0x10", "0x1p-3", "1p3", "infin", "infinit", "infinityy", "+nan", "-NaN",
                       "nana", "1f", "1e5.0", "Inf1", "1d", "١"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    double d;
    if (mg_parse_float(bad[i], strlen(bad[i]), &d) != MG_EPARSE) MG_FAIL_("accepted bad float \"%s\"", bad[i]);
  }
  double d;
  CHECK_INT(mg_parse_float("INFINITY", 8, &d), 0);
  CHECK_DBL(d, INFINITY);
  CHECK_INT(mg_parse_float("-iNf", 4, &d), 0);
  CHECK_DBL(d, -INFINITY);
  CHECK_INT(mg_parse_float("nAn", 3, &d), 0);
  CHECK_U64(bits_of(d), 0x7ff8000000000001ULL);
  CHECK_INT(mg_parse_float("-0", 2, &d), 0);
  CHECK(signbit(d));
  /* Only the given bytes count: what follows is not read. */
  CHECK_INT(mg_parse_float("12345", 2, &d), 0);
  CHECK_DBL(d, 12);
}

/* Random short strings over the float alphabet: accepted exactly when Go's
 * grammar (minus '_' and hex) says so, and then equal to strtod. */
MG_TEST(float_grammar_differential) {
  setlocale(LC_NUMERIC, "C");
  regex_t dec, spec;
  REQUIRE(regcomp(&dec, "^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$", REG_EXTENDED | REG_NOSUB) == 0);
  REQUIRE(regcomp(&spec, "^([+-]?(inf|infinity)|nan)$", REG_EXTENDED | REG_NOSUB | REG_ICASE) == 0);
  const char alpha[] = "0123456789.eE+-_xpinfatyINFATY";
  char s[16];
  int failures = 0;
  for (int i = 0; i < 200000 && failures < 20; i++) {
    size_t n = rnd() % 9;
    for (size_t k = 0; k < n; k++) s[k] = alpha[rnd() % (sizeof alpha - 1)];
    s[n] = '\0';
    double got, want;
    int rc = mg_parse_float(s, n, &got);
    bool is_dec = regexec(&dec, s, 0, NULL, 0) == 0;
    bool is_spec = regexec(&spec, s, 0, NULL, 0) == 0;
    if (!is_dec && !is_spec) {
      if (rc != MG_EPARSE) {
        MG_FAIL_("accepted \"%s\"", s);
        failures++;
      }
      continue;
    }
    if (is_spec) {
      if (rc != 0) {
        MG_FAIL_("rejected special \"%s\"", s);
        failures++;
      }
      continue;
    }
    failures += check_against_strtod(s);
    (void)want;
  }
  regfree(&dec);
  regfree(&spec);
  CHECK_INT(failures, 0);
}

/* ---- small helpers ------------------------------------------------------------ */

MG_TEST(format_from_content_type) {
  const char *om = "application/openmetrics-text; version=1.0.0; charset=utf-8";
  const char *txt = "text/plain; version=0.0.4";
  CHECK_INT(mg_parse_format_from_content_type(om, strlen(om)), MG_FMT_OPENMETRICS);
  CHECK_INT(mg_parse_format_from_content_type(txt, strlen(txt)), MG_FMT_PROM_TEXT);
  CHECK_INT(mg_parse_format_from_content_type(NULL, 0), MG_FMT_PROM_TEXT);
  CHECK_INT(mg_parse_format_from_content_type("", 0), MG_FMT_PROM_TEXT);
  CHECK_INT(mg_parse_format_from_content_type("Application/OpenMetrics-Text", 28), MG_FMT_OPENMETRICS);
  CHECK_INT(mg_parse_format_from_content_type("  application/openmetrics-text ;version=0.0.1", 45), MG_FMT_OPENMETRICS);
  CHECK_INT(mg_parse_format_from_content_type("application/openmetrics-textual", 31), MG_FMT_PROM_TEXT);
  /* n bounds the read: a longer buffer is not looked at past n. */
  CHECK_INT(mg_parse_format_from_content_type("application/openmetrics-text", 20), MG_FMT_PROM_TEXT);
  CHECK_INT(mg_parse_format_from_content_type("application/json", 16), MG_FMT_PROM_TEXT);
}

MG_TEST(name_checks) {
  CHECK(mg_parse_valid_metric_name(MG_STR_LIT("http_requests_total")));
  CHECK(mg_parse_valid_metric_name(MG_STR_LIT(":a:b9")));
  CHECK(mg_parse_valid_metric_name(MG_STR_LIT("__reserved")));
  CHECK(!mg_parse_valid_metric_name(MG_STR_LIT("")));
  CHECK(!mg_parse_valid_metric_name(MG_STR_LIT("9a")));
  CHECK(!mg_parse_valid_metric_name(MG_STR_LIT("a-b")));
  CHECK(!mg_parse_valid_metric_name(MG_STR_LIT("a.b")));
  CHECK(mg_parse_valid_label_name(MG_STR_LIT("_a9")));
  CHECK(mg_parse_valid_label_name(MG_STR_LIT("__name__")));
  CHECK(!mg_parse_valid_label_name(MG_STR_LIT("a:b")));
  CHECK(!mg_parse_valid_label_name(MG_STR_LIT("")));
  CHECK(!mg_parse_valid_label_name(MG_STR_LIT("0a")));
  CHECK(!mg_parse_valid_label_name(mg_str_n("a\xc3\xa9", 3)));
  /* Reserved "__" names appear in bodies and are allowed there. */
  rec_t *r = rec_new();
  mg_parse_error_t e;
  CHECK_INT(run("__meta{__x=\"1\"} 1\n", MG_FMT_PROM_TEXT, r, &e), 0);
  CHECK_INT(r->ns, 1);
  CHECK(str_is(r->s[0].labels[0].name, "__x"));
  rec_free(r);
}

MG_TEST_MAIN()
