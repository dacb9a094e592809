/* Tests for mg_ini: the AWS profile-file dialect (sections, comments,
 * continuation and sub-properties), exact error lines, and that errors
 * never carry input bytes. */
#include <stdio.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_ini.h"
#include "mg_mem.h"
#include "mg_test.h"

/* Renders every item as one line: "S name@line", "P sec.key=value@line",
 * "U sec.parent.key=value@line" (newlines in values shown as "\n"). */
static int render(void *ud, const mg_ini_item_t *it) {
  mg_buf_t *b = ud;
  mg_buf_t v;
  mg_buf_init(&v, 0);
  for (size_t i = 0; i < it->value.n; i++) {
    if (it->value.p[i] == '\n') mg_buf_append_str(&v, "\\n");
    else mg_buf_append_byte(&v, (unsigned char)it->value.p[i]);
  }
  switch (it->kind) {
  case MG_INI_SECTION: mg_buf_printf(b, "S %.*s@%u\n", (int)it->section.n, it->section.p, it->line); break;
  case MG_INI_PROPERTY:
    mg_buf_printf(b, "P %.*s.%.*s=%s@%u\n", (int)it->section.n, it->section.p, (int)it->key.n, it->key.p,
                  v.data ? v.data : "", it->line);
    break;
  case MG_INI_SUBPROPERTY:
    mg_buf_printf(b, "U %.*s.%.*s.%.*s=%s@%u\n", (int)it->section.n, it->section.p, (int)it->parent.n,
                  it->parent.p, (int)it->key.n, it->key.p, v.data ? v.data : "", it->line);
    break;
  }
  mg_buf_cleanup(&v);
  return 0;
}

static int parse_render(const char *in, mg_buf_t *out, mg_ini_error_t *err) {
  mg_buf_reset(out);
  mg_buf_append_str(out, "");
  return mg_ini_parse(in, strlen(in), render, out, err);
}

MG_TEST(ini_aws_files) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_ini_error_t err;
  const char *in = "# credentials written by the SSM agent\r\n"
                   "[default]\r\n"
                   "aws_access_key_id = ASIAEXAMPLE\r\n"
                   "aws_secret_access_key=se/cr+et#notacomment\r\n"
                   "aws_session_token =  tok=en== ; trailing comment\r\n"
                   "\r\n"
                   "  ; indented comment\n"
                   "[profile dev]   # comment after a header\n"
                   "role_arn=arn:aws:iam::123456789012:role/x\n"
                   "empty =\n"
                   "s3 =\n"
                   "  max_concurrent_requests = 10\n"
                   "\tsignature_version=s3v4 # c\n"
                   "multi = first\n"
                   "  second line\n"
                   "  third\n"
                   "[ spaced name ]\n"
                   "k = v";
  CHECK_INT(parse_render(in, &out, &err), 0);
  CHECK_STR(out.data, "S default@2\n"
                      "P default.aws_access_key_id=ASIAEXAMPLE@3\n"
                      "P default.aws_secret_access_key=se/cr+et#notacomment@4\n"
                      "P default.aws_session_token=tok=en==@5\n"
                      "S profile dev@8\n"
                      "P profile dev.role_arn=arn:aws:iam::123456789012:role/x@9\n"
                      "P profile dev.empty=@10\n"
                      "P profile dev.s3=@11\n"
                      "U profile dev.s3.max_concurrent_requests=10@12\n"
                      "U profile dev.s3.signature_version=s3v4@13\n"
                      "P profile dev.multi=first\\nsecond line\\nthird@14\n"
                      "S spaced name@17\n"
                      "P spaced name.k=v@18\n");
  CHECK_INT(parse_render("", &out, &err), 0);
  CHECK_STR(out.data, "");
  CHECK_INT(parse_render("\n\n# only comments\n;x\n", &out, &err), 0);
  CHECK_STR(out.data, "");
  mg_buf_cleanup(&out);
}

MG_TEST(ini_errors_name_the_line_not_the_content) {
  static const struct {
    const char *in;
    unsigned line;
    const char *msg;
  } cases[] = {
      {"[default]\naws_access_key_id = A\naws_secret_access_key SECRETSECRET\n", 3, "expected 'name = value'"},
      {"[default\nk=v\n", 1, "section header must end with ']'"},
      {"[default] junk\n", 1, "section header must end with ']'"},
      {"[a]b]\n", 1, "section name contains '[' or ']'"},
      {"k = v\n[default]\n", 1, "property outside any [section]"},
      {"[default]\n= SECRETSECRET\n", 2, "empty property name"},
      {"  k = v\n", 1, "indented line without a property to continue"},
      {"[s]\nk =\n  SECRETSECRET\n", 3, "expected 'name = value' in a sub-property"},
      {"[s]\nk =\n  a = 1\n  = SECRETSECRET\n", 4, "empty sub-property name"},
      {"[s]\nk = v\nx = SECRET\0SECRET\n", 3, "NUL byte in line"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mg_buf_t out;
    mg_buf_init(&out, 0);
    mg_ini_error_t err;
    size_t len = strlen(cases[i].in);
    if (i == 9) len = sizeof("[s]\nk = v\nx = SECRET\0SECRET\n") - 1;
    int rc = mg_ini_parse(cases[i].in, len, render, &out, &err);
    CHECK_INT(rc, MG_EPARSE);
    CHECK_INT(err.line, cases[i].line);
    CHECK_STR(err.msg, cases[i].msg);
    CHECK(err.msg && !strstr(err.msg, "SECRET"));
    mg_buf_cleanup(&out);
  }
}

static int stop_at_second(void *ud, const mg_ini_item_t *it) {
  int *n = ud;
  (void)it;
  return ++*n == 2 ? 42 : 0;
}

MG_TEST(ini_callback_stops_and_limits) {
  int n = 0;
  CHECK_INT(mg_ini_parse("[a]\nb=1\nc=2\n", 12, stop_at_second, &n, NULL), 42);
  CHECK_INT(n, 2);
  char *big = mg_malloc(MG_INI_MAX_INPUT + 1);
  REQUIRE(big);
  memset(big, '\n', MG_INI_MAX_INPUT + 1);
  n = 0;
  CHECK_INT(mg_ini_parse(big, MG_INI_MAX_INPUT + 1, stop_at_second, &n, NULL), MG_ETOOBIG);
  CHECK_INT(mg_ini_parse(big, MG_INI_MAX_INPUT, stop_at_second, &n, NULL), 0);
  mg_free(big);
  CHECK_INT(mg_ini_parse(NULL, 0, stop_at_second, &n, NULL), 0);
  CHECK_INT(mg_ini_parse("x", 1, NULL, NULL, NULL), MG_EINVAL);
  /* Allocation failure of the scratch buffer is reported, not crashed on. */
  mg_mem_fail_at(1);
  CHECK_INT(mg_ini_parse("[a]\nb=1\n", 8, stop_at_second, &n, NULL), MG_ENOMEM);
  mg_mem_fail_at(0);
}

MG_TEST_MAIN()
