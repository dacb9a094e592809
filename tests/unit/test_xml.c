/* Tests for mg_xml: STS answers (success and ErrorResponse, as AWS sends
 * them), entities and CDATA, well-formedness checks, DOCTYPE refusal,
 * limits, and that errors never carry input bytes. */
#include <stdio.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_test.h"
#include "mg_xml.h"

static int render(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  mg_buf_t *b = ud;
  for (size_t i = 0; i < depth; i++) mg_buf_printf(b, "%s%.*s", i ? "/" : "", (int)path[i].n, path[i].p);
  mg_buf_append_byte(b, '=');
  for (size_t i = 0; i < text.n; i++) {
    unsigned char c = (unsigned char)text.p[i];
    if (c < 0x20 || c >= 0x7f) mg_buf_printf(b, "<%02x>", c);
    else mg_buf_append_byte(b, c);
  }
  mg_buf_append_byte(b, '\n');
  return 0;
}

static int parse(const char *in, mg_buf_t *out, mg_xml_error_t *err) {
  mg_buf_reset(out);
  mg_buf_append_str(out, "");
  return mg_xml_parse(in, strlen(in), render, out, err);
}

MG_TEST(xml_sts_answers) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_xml_error_t err;
  const char *ok = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
                   "  <AssumeRoleResult>\n"
                   "  <SourceIdentity>DevUser123</SourceIdentity>\n"
                   "    <AssumedRoleUser>\n"
                   "      <Arn>arn:aws:sts::123456789012:assumed-role/demo/John</Arn>\n"
                   "      <AssumedRoleId>ARO123EXAMPLE123:John</AssumedRoleId>\n"
                   "    </AssumedRoleUser>\n"
                   "    <Credentials>\n"
                   "      <SessionToken>AQoDYXdzEPT//////////wEXAMPLE</SessionToken>\n"
                   "      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>\n"
                   "      <Expiration>2019-11-09T13:34:41Z</Expiration>\n"
                   "      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>\n"
                   "    </Credentials>\n"
                   "    <PackedPolicySize>8</PackedPolicySize>\n"
                   "  </AssumeRoleResult>\n"
                   "  <ResponseMetadata>\n"
                   "    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>\n"
                   "  </ResponseMetadata>\n"
                   "</AssumeRoleResponse>\n";
  CHECK_INT(parse(ok, &out, &err), 0);
  CHECK_STR(
      out.data,
      "AssumeRoleResponse/AssumeRoleResult/SourceIdentity=DevUser123\n"
      "AssumeRoleResponse/AssumeRoleResult/AssumedRoleUser/Arn=arn:aws:sts::123456789012:assumed-role/demo/John\n"
      "AssumeRoleResponse/AssumeRoleResult/AssumedRoleUser/AssumedRoleId=ARO123EXAMPLE123:John\n"
      "AssumeRoleResponse/AssumeRoleResult/Credentials/SessionToken=AQoDYXdzEPT//////////wEXAMPLE\n"
      "AssumeRoleResponse/AssumeRoleResult/Credentials/SecretAccessKey=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY\n"
      "AssumeRoleResponse/AssumeRoleResult/Credentials/Expiration=2019-11-09T13:34:41Z\n"
      "AssumeRoleResponse/AssumeRoleResult/Credentials/AccessKeyId=ASIAIOSFODNN7EXAMPLE\n"
      "AssumeRoleResponse/AssumeRoleResult/PackedPolicySize=8\n"
      "AssumeRoleResponse/ResponseMetadata/RequestId=c6104cbe-af31-11e0-8154-cbc7ccf896c7\n");
  const char *bad = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n"
                    "<ErrorResponse xmlns='https://sts.amazonaws.com/doc/2011-06-15/'>\r\n"
                    "  <Error>\r\n    <Type>Sender</Type>\r\n    <Code>ExpiredToken</Code>\r\n"
                    "    <Message>The security token included in the request is expired</Message>\r\n"
                    "  </Error>\r\n  <RequestId>id</RequestId>\r\n</ErrorResponse>\r\n";
  CHECK_INT(parse(bad, &out, &err), 0);
  CHECK_STR(out.data, "ErrorResponse/Error/Type=Sender\nErrorResponse/Error/Code=ExpiredToken\n"
                      "ErrorResponse/Error/Message=The security token included in the request is expired\n"
                      "ErrorResponse/RequestId=id\n");
  mg_buf_cleanup(&out);
}

MG_TEST(xml_text_entities_cdata_comments) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_xml_error_t err;
  CHECK_INT(parse("\xef\xbb\xbf<?xml version='1.0'?><!-- c --><a x='1' y=\"&amp;&#x3c;\"><b>&lt;&gt;&amp;&quot;&apos;"
                  "&#65;&#x1F600;</b><?pi data?><c><![CDATA[<raw & ]]]]><![CDATA[>]]></c><d/><e >x<!--c-->y</e ></a>"
                  "<!-- after --><?after?>\n",
                  &out, &err),
            0);
  CHECK_STR(out.data, "a/b=<>&\"'A<f0><9f><98><80>\na/c=<raw & ]]>\na/d=\na/e=xy\n");
  CHECK_INT(parse("<ns:r><ns:v>\xc3\xa9</ns:v></ns:r>", &out, &err), 0);
  CHECK_STR(out.data, "ns:r/ns:v=<c3><a9>\n");
  CHECK_INT(parse("<r/>", &out, &err), 0);
  CHECK_STR(out.data, "r=\n");
  mg_buf_cleanup(&out);
}

MG_TEST(xml_strict) {
  static const char *bad[] = {
      "", "text", "<a>", "<a></b>", "<a><b></a></b>", "<a></a><b></b>", "<a></a>junk", "<a>&unknown;</a>",
      "<a>&#0;</a>", "<a>&#xD800;</a>", "<a>&#99999999;</a>", "<a>&amp</a>", "<a>x < y</a>", "<a>]]></a>",
      "<a b></a>", "<a b=c></a>", "<a b='1' b='2'></a>", "<a b='<'></a>", "<a b='1'c='2'></a>",
      "<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", "<a><!DOCTYPE x></a>", "<a><!-- x -- y --></a>",
      "<a><![CDATA[x</a>", "<a>\x01</a>", "<a>\xc0\xaf</a>", "<a>\xef\xbf\xbe</a>", " <?xml version='1.0'?><a/>",
      "<a><?xml x?></a>", "<1a></1a>", "<a></a >x", "<a/><!-- open",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mg_buf_t out;
    mg_buf_init(&out, 0);
    mg_xml_error_t err = {0, NULL};
    int rc = mg_xml_parse(bad[i], strlen(bad[i]), render, &out, &err);
    if (rc != MG_EPARSE) MG_FAIL_("case %zu accepted: rc=%d out=%s", i, rc, out.data ? out.data : "");
    CHECK(err.msg != NULL && err.line >= 1);
    mg_buf_cleanup(&out);
  }
  /* Depth: 32 levels pass, 33 fail. */
  for (int extra = 0; extra <= 1; extra++) {
    mg_buf_t doc, out;
    mg_buf_init(&doc, 0);
    mg_buf_init(&out, 0);
    int n = MG_XML_MAX_DEPTH + extra;
    for (int k = 0; k < n; k++) mg_buf_append_str(&doc, "<e>");
    for (int k = 0; k < n; k++) mg_buf_append_str(&doc, "</e>");
    CHECK_INT(mg_xml_parse(doc.data, doc.len, render, &out, NULL), extra ? MG_EPARSE : 0);
    mg_buf_cleanup(&doc);
    mg_buf_cleanup(&out);
  }
}

MG_TEST(xml_errors_and_limits) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  mg_xml_error_t err;
  CHECK_INT(parse("<r>\n<SecretAccessKey>SECRET</SecretAccessKey>\n<x>SECRET&bad;</x></r>", &out, &err), MG_EPARSE);
  CHECK_INT(err.line, 3);
  CHECK(err.msg && !strstr(err.msg, "SECRET"));
  CHECK_INT(mg_xml_parse("<a/>", MG_XML_MAX_INPUT + 1, render, &out, NULL), MG_ETOOBIG);
  CHECK_INT(mg_xml_parse("<a/>", 4, NULL, NULL, NULL), MG_EINVAL);
  mg_mem_fail_at(2);
  CHECK_INT(mg_xml_parse("<a/>", 4, render, &out, NULL), MG_ENOMEM);
  mg_mem_fail_at(0);
  mg_buf_cleanup(&out);
}

static int render_end(void *ud, const mg_str_t *path, size_t depth) {
  mg_buf_t *b = ud;
  mg_buf_printf(b, "end %.*s@%zu\n", (int)path[depth - 1].n, path[depth - 1].p, depth);
  return 0;
}

static int stop_at_item(void *ud, const mg_str_t *path, size_t depth) {
  (void)ud;
  return mg_str_eq_c(path[depth - 1], "item") ? 42 : 0;
}

MG_TEST(xml_element_ends) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  const char *doc = "<r><set><item><k>a</k><v/></item><item><k>b</k></item></set><n>1</n></r>";
  mg_xml_handlers_t h = {.leaf = render, .end = render_end};
  CHECK_INT(mg_xml_parse_ex(doc, strlen(doc), &h, &out, NULL), 0);
  CHECK_STR(out.data, "r/set/item/k=a\nend k@4\nr/set/item/v=\nend v@4\nend item@3\n"
                      "r/set/item/k=b\nend k@4\nend item@3\nend set@2\nr/n=1\nend n@2\nend r@1\n");
  h.end = stop_at_item;
  CHECK_INT(mg_xml_parse_ex(doc, strlen(doc), &h, &out, NULL), 42);
  /* A caller's limit above the default, and one below it. */
  h = (mg_xml_handlers_t){.leaf = render, .max_input = 3};
  CHECK_INT(mg_xml_parse_ex("<a/>", 4, &h, &out, NULL), MG_ETOOBIG);
  h.max_input = (size_t)MG_XML_MAX_INPUT * 4;
  mg_buf_t big;
  mg_buf_init(&big, 0);
  mg_buf_append_str(&big, "<r>");
  while (big.len < (size_t)MG_XML_MAX_INPUT + 100) mg_buf_append_str(&big, "<i>x</i>");
  mg_buf_append_str(&big, "</r>");
  mg_buf_reset(&out);
  CHECK_INT(mg_xml_parse_ex(big.data, big.len, &h, &out, NULL), 0);
  CHECK_INT(mg_xml_parse(big.data, big.len, render, &out, NULL), MG_ETOOBIG);
  CHECK_INT(mg_xml_parse_ex("<a/>", 4, NULL, NULL, NULL), MG_EINVAL);
  mg_buf_cleanup(&big);
  mg_buf_cleanup(&out);
}

MG_TEST_MAIN()
