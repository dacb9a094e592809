/* Tests for mg_json: the members of credential documents, unescaping,
 * strictness (each case of RFC 8259 a lax parser would accept), limits,
 * and that errors never carry input bytes. */
#include <stdio.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_json.h"
#include "mg_mem.h"
#include "mg_test.h"

static int render(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  static const char *names[] = {"null", "false", "true", "number", "string", "object", "array"};
  mg_buf_t *b = ud;
  mg_buf_printf(b, "%.*s:%s:", (int)key.n, key.p, names[type]);
  for (size_t i = 0; i < value.n; i++) {
    unsigned char c = (unsigned char)value.p[i];
    if (c < 0x20 || c >= 0x7f) mg_buf_printf(b, "<%02x>", c);
    else mg_buf_append_byte(b, c);
  }
  mg_buf_append_byte(b, '\n');
  return 0;
}

static int parse(const char *in, mg_buf_t *out, mg_json_error_t *err) {
  mg_buf_reset(out);
  mg_buf_append_str(out, "");
  return mg_json_object(in, strlen(in), render, out, err);
}

MG_TEST(json_credential_documents) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_json_error_t err;
  const char *imds = "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2024-05-01T10:00:00Z\",\n"
                     "  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"ASIAEXAMPLE\",\n"
                     "  \"SecretAccessKey\" : \"se/cr+et\",\n  \"Token\" : \"to\\/ken\",\n"
                     "  \"Expiration\" : \"2024-05-01T16:00:00Z\"\n}\n";
  CHECK_INT(parse(imds, &out, &err), 0);
  CHECK_STR(out.data, "Code:string:Success\nLastUpdated:string:2024-05-01T10:00:00Z\nType:string:AWS-HMAC\n"
                      "AccessKeyId:string:ASIAEXAMPLE\nSecretAccessKey:string:se/cr+et\nToken:string:to/ken\n"
                      "Expiration:string:2024-05-01T16:00:00Z\n");
  CHECK_INT(parse("{\"Version\": 1, \"n\": -0.5e+3, \"o\": {\"a\": [1, {\"b\": null}]}, \"t\": true, \"f\": false,"
                  " \"z\": null, \"a\": []}",
                  &out, &err),
            0);
  CHECK_STR(out.data, "Version:number:1\nn:number:-0.5e+3\no:object:{\"a\": [1, {\"b\": null}]}\nt:true:true\n"
                      "f:false:false\nz:null:null\na:array:[]\n");
  CHECK_INT(parse("{\"e\\u00e9\": \"\\ud83d\\ude00\\b\\f\\n\\r\\t\\\"\\\\\\u0000\", \"u\": \"\xc3\xa9\xe2\x82\xac\"}",
                  &out, &err),
            0);
  CHECK_STR(out.data, "e\xc3\xa9:string:<f0><9f><98><80><08><0c><0a><0d><09>\"\\<00>\n"
                      "u:string:<c3><a9><e2><82><ac>\n");
  CHECK_INT(parse(" {} ", &out, &err), 0);
  CHECK_STR(out.data, "");
  mg_buf_cleanup(&out);
}

MG_TEST(json_strict) {
  static const char *bad[] = {
      "", "[]", "\"s\"", "1", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1}x", "{\"a\":1}{}",
      "{'a':1}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}", "{\"a\":-}",
      "{\"a\":tru}", "{\"a\":nul}", "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}",
      "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"\xc0\xaf\"}",
      "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}", "{\"a\":\"\xe2\x82\"}", "\xef\xbb\xbf{}",
      "{\"a\":[1,]}", "{\"a\":[1 2]}", "{\"a\":{\"b\" 1}}", "{\"a\":\"unterminated}", "{\"a\":NaN}",
      "{\"a\":Infinity}", "{\"a\":1}\x00",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mg_buf_t out;
    mg_buf_init(&out, 0);
    mg_json_error_t err = {0, NULL};
    size_t len = strlen(bad[i]) + (i == sizeof bad / sizeof bad[0] - 1);
    int rc = mg_json_object(bad[i], len, render, &out, &err);
    if (rc != MG_EPARSE) MG_FAIL_("case %zu accepted: rc=%d", i, rc);
    CHECK(err.msg != NULL);
    CHECK(err.offset <= len);
    mg_buf_cleanup(&out);
  }
  /* Depth limit: 31 nested arrays in the top object (depth 32) pass, 32 fail. */
  char doc[200];
  for (int extra = 0; extra <= 1; extra++) {
    int n = MG_JSON_MAX_DEPTH - 1 + extra;
    size_t o = 0;
    o += (size_t)snprintf(doc + o, sizeof doc - o, "{\"a\":");
    for (int k = 0; k < n; k++) doc[o++] = '[';
    for (int k = 0; k < n; k++) doc[o++] = ']';
    doc[o++] = '}';
    doc[o] = 0;
    mg_buf_t out;
    mg_buf_init(&out, 0);
    CHECK_INT(mg_json_object(doc, o, render, &out, NULL), extra ? MG_EPARSE : 0);
    mg_buf_cleanup(&out);
  }
}

MG_TEST(json_errors_and_limits) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_json_error_t err;
  CHECK_INT(parse("{\"SecretAccessKey\": \"SECRETSECRET\x01\"}", &out, &err), MG_EPARSE);
  CHECK_INT(err.offset, 33);
  CHECK_STR(err.msg, "control byte in string");
  CHECK_INT(mg_json_object("{}", MG_JSON_MAX_INPUT + 1, render, &out, NULL), MG_ETOOBIG);
  CHECK_INT(mg_json_object("{}", 2, NULL, NULL, NULL), MG_EINVAL);
  mg_mem_fail_at(1);
  CHECK_INT(mg_json_object("{}", 2, render, &out, NULL), MG_ENOMEM);
  mg_mem_fail_at(0);
  mg_buf_cleanup(&out);
}

static int stop_cb(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  (void)ud, (void)key, (void)type, (void)value;
  return 7;
}

MG_TEST(json_callback_stops) { CHECK_INT(mg_json_object("{\"a\":1,\"b\":2}", 13, stop_cb, NULL, NULL), 7); }

static int render_element(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  char key[24];
  snprintf(key, sizeof key, "%zu", index);
  return render(ud, mg_str(key), type, value);
}

static int parse_array(const char *in, size_t len, mg_buf_t *out, mg_json_error_t *err) {
  mg_buf_reset(out);
  mg_buf_append_str(out, "");
  return mg_json_array(in, len, render_element, out, err);
}

MG_TEST(json_array_elements) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_json_error_t err;
  const char *doc = " [ {\"targets\": [\"a:1\"], \"labels\": {\"k\": \"v\"}}, \"s\\u00e9\\n\", -1.5e3, true, false,"
                    " null, [[]], {} ]\n";
  CHECK_INT(parse_array(doc, strlen(doc), &out, &err), 0);
  CHECK_STR(out.data, "0:object:{\"targets\": [\"a:1\"], \"labels\": {\"k\": \"v\"}}\n1:string:s<c3><a9><0a>\n"
                      "2:number:-1.5e3\n3:true:true\n4:false:false\n5:null:null\n6:array:[[]]\n7:object:{}\n");
  CHECK_INT(parse_array("[]", 2, &out, &err), 0);
  CHECK_STR(out.data, "");
  /* Each element is reported as it is read, so the caller sees "a" before the
   * error is found; the return value is what counts. */
  static const char *bad[] = {"", "{}", "null", "\"s\"", "[", "[1,]", "[,1]", "[1 2]", "[1]]", "[1]x", "[\"\x01\"]",
                              "[\"\\ud800\"]", "[\"\xc0\xaf\"]", "[01]", "[{\"a\" 1}]", "[{\"a\":1,}]",
                              "\xef\xbb\xbf[]",
                              "[\"a\"", "[[[]]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err = (mg_json_error_t){0, NULL};
    int rc = parse_array(bad[i], strlen(bad[i]), &out, &err);
    if (rc != MG_EPARSE) MG_FAIL_("case %zu accepted: rc=%d", i, rc);
    CHECK(err.msg != NULL);
    CHECK(err.offset <= strlen(bad[i]));
  }
  CHECK_INT(parse_array("[1, 2}", 6, &out, &err), MG_EPARSE);
  CHECK_STR(err.msg, "expected ',' or ']'");
  CHECK_INT(err.offset, 5);
  CHECK_INT(parse_array("{}", 2, &out, &err), MG_EPARSE);
  CHECK_STR(err.msg, "expected an array");
  CHECK_INT(parse_array("[] []", 5, &out, &err), MG_EPARSE);
  CHECK_STR(err.msg, "trailing data after the array");
  mg_buf_cleanup(&out);
}

static int stop_element(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  (void)type, (void)value;
  *(size_t *)ud = index;
  return index == 1 ? 9 : 0;
}

static int count_element(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  (void)index, (void)type, (void)value;
  ++*(size_t *)ud;
  return 0;
}

MG_TEST(json_array_limits) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  size_t seen = 0;
  CHECK_INT(mg_json_array("[1,2,3]", 7, stop_element, &seen, NULL), 9);
  CHECK_INT(seen, 1);
  CHECK_INT(mg_json_array("[]", MG_JSON_MAX_ARRAY_INPUT + 1, render_element, &out, NULL), MG_ETOOBIG);
  CHECK_INT(mg_json_array("[]", 2, NULL, NULL, NULL), MG_EINVAL);
  /* Only string elements need memory: a list of numbers parses without any. */
  mg_mem_fail_at(1);
  CHECK_INT(mg_json_array("[1, {\"a\": \"b\"}]", 15, count_element, &seen, NULL), 0);
  mg_mem_fail_at(0);
  mg_mem_fail_at(1);
  CHECK_INT(mg_json_array("[1, \"b\"]", 8, count_element, &seen, NULL), MG_ENOMEM);
  mg_mem_fail_at(0);
  /* A list twice the size of the object limit. */
  mg_buf_t big;
  mg_buf_init(&big, 0);
  mg_buf_append_str(&big, "[");
  for (size_t i = 0; i < MG_JSON_MAX_INPUT; i++) mg_buf_append_str(&big, i ? ",0" : "0");
  mg_buf_append_str(&big, "]");
  size_t count = 0;
  CHECK_INT(mg_json_array(big.data, big.len, count_element, &count, NULL), 0);
  CHECK_INT(count, MG_JSON_MAX_INPUT);
  mg_buf_cleanup(&big);
  mg_buf_cleanup(&out);
}

MG_TEST_MAIN()
