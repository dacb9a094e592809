/* Unit tests for mg_wire: what it encodes must decode with the protobuf-c
 * code generated from core/remote.proto, and snappy must round-trip. */
#include <math.h>

#include "mg_err.h"
#include "mg_test.h"
#include "mg_wire.h"
#include "remote.pb-c.h"

MG_TEST(series_roundtrip) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  mg_label_t l1[] = {{MG_STR_LIT("__name__"), MG_STR_LIT("http_requests_total")},
                     {MG_STR_LIT("code"), MG_STR_LIT("200")},
                     {MG_STR_LIT("instance"), MG_STR_LIT("127.0.0.1:9100")},
                     {MG_STR_LIT("job"), MG_STR_LIT("node")}};
  CHECK_INT(mg_wire_append_series(&b, l1, 4, 1027.5, 1700000000123), 0);
  /* A long value forces multi-byte varints; a negative timestamp 10 bytes. */
  char big[300];
  memset(big, 'v', sizeof big);
  mg_label_t l2[] = {{MG_STR_LIT("__name__"), MG_STR_LIT("x")}, {MG_STR_LIT("a"), mg_str_n(big, sizeof big)}};
  CHECK_INT(mg_wire_append_series(&b, l2, 2, mg_wire_stale_nan(), -5), 0);
  CHECK_INT(mg_wire_append_metadata(&b, MG_MTYPE_COUNTER, MG_STR_LIT("http_requests_total"), MG_STR_LIT("Requests."),
                                    MG_STR_LIT("")),
            0);
  Prometheus__WriteRequest *wr = prometheus__write_request__unpack(NULL, b.len, (const uint8_t *)b.data);
  REQUIRE(wr != NULL);
  REQUIRE(wr->n_timeseries == 2);
  Prometheus__TimeSeries *ts = wr->timeseries[0];
  REQUIRE(ts->n_labels == 4 && ts->n_samples == 1);
  CHECK_STR(ts->labels[0]->name, "__name__");
  CHECK_STR(ts->labels[0]->value, "http_requests_total");
  CHECK_STR(ts->labels[3]->value, "node");
  CHECK_DBL(ts->samples[0]->value, 1027.5);
  CHECK_INT(ts->samples[0]->timestamp, 1700000000123LL);
  ts = wr->timeseries[1];
  REQUIRE(ts->n_labels == 2);
  CHECK_INT(strlen(ts->labels[1]->value), 300);
  CHECK(mg_wire_is_stale_nan(ts->samples[0]->value));
  CHECK_INT(ts->samples[0]->timestamp, -5);
  REQUIRE(wr->n_metadata == 1);
  CHECK_INT(wr->metadata[0]->type, PROMETHEUS__METRIC_METADATA__METRIC_TYPE__COUNTER);
  CHECK_STR(wr->metadata[0]->metric_family_name, "http_requests_total");
  CHECK_STR(wr->metadata[0]->help, "Requests.");
  prometheus__write_request__free_unpacked(wr, NULL);
  mg_buf_cleanup(&b);
}

/* Every name/value length pair around the one-byte-varint fast path (a
 * Label message under 128 bytes) and the short-copy sizes decodes to the
 * same bytes. */
MG_TEST(series_label_lengths) {
  char name[140], value[140];
  for (size_t i = 0; i < sizeof name; i++) {
    name[i] = (char)('a' + i % 26);
    value[i] = (char)('A' + i % 26);
  }
  mg_buf_t b;
  mg_buf_init(&b, 0);
  for (size_t nn = 1; nn <= 130; nn++)
    for (size_t vn = 0; vn <= 130; vn++) {
      mg_buf_reset(&b);
      mg_label_t l[] = {{MG_STR_LIT("__name__"), MG_STR_LIT("m")}, {mg_str_n(name, nn), mg_str_n(value, vn)}};
      REQUIRE(mg_wire_append_series(&b, l, 2, 1.5, 7) == 0);
      Prometheus__WriteRequest *wr = prometheus__write_request__unpack(NULL, b.len, (const uint8_t *)b.data);
      REQUIRE(wr != NULL && wr->n_timeseries == 1 && wr->timeseries[0]->n_labels == 2);
      Prometheus__Label *got = wr->timeseries[0]->labels[1];
      CHECK_MEM(got->name, strlen(got->name), name, nn);
      CHECK_MEM(got->value, strlen(got->value), value, vn);
      CHECK_INT(wr->timeseries[0]->samples[0]->timestamp, 7);
      prometheus__write_request__free_unpacked(wr, NULL);
    }
  mg_buf_cleanup(&b);
}

MG_TEST(stale_nan_bits) {
  double s = mg_wire_stale_nan();
  CHECK(isnan(s));
  CHECK(mg_wire_is_stale_nan(s));
  CHECK(!mg_wire_is_stale_nan(NAN));
  CHECK(!mg_wire_is_stale_nan(1.0));
}

MG_TEST(snappy_roundtrip) {
  mg_buf_t in, c, out;
  mg_buf_init(&in, 0);
  mg_buf_init(&c, 0);
  mg_buf_init(&out, 0);
  for (int i = 0; i < 10000; i++) mg_buf_printf(&in, "node_cpu_seconds_total{cpu=\"%d\",mode=\"idle\"} %d\n", i % 16, i);
  CHECK_INT(mg_wire_snappy_compress(in.data, in.len, &c), 0);
  CHECK(c.len < in.len / 3);
  CHECK_INT(mg_wire_snappy_uncompress(c.data, c.len, &out), 0);
  CHECK_MEM(out.data, out.len, in.data, in.len);
  /* Corrupt input is refused, not trusted. */
  mg_buf_reset(&out);
  c.data[c.len / 2] ^= 0x55;
  c.data[0] = (char)0xff;
  CHECK(mg_wire_snappy_uncompress(c.data, c.len, &out) != 0);
  /* Output limit respected. */
  mg_buf_t small;
  mg_buf_init(&small, 100);
  mg_buf_reset(&c);
  mg_wire_snappy_compress(in.data, in.len, &c);
  CHECK_INT(mg_wire_snappy_uncompress(c.data, c.len, &small), MG_ETOOBIG);
  mg_buf_cleanup(&small);
  mg_buf_cleanup(&in);
  mg_buf_cleanup(&c);
  mg_buf_cleanup(&out);
}

MG_TEST_MAIN()
