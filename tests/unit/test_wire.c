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

/* Joined snappy blocks decode to the concatenation, whatever the pieces:
 * empty, tiny, repetitive (copies reaching back far), over one 64 KiB
 * fragment; joined WriteRequests are one WriteRequest. */
MG_TEST(snappy_join) {
  enum { NP = 6 };
  mg_buf_t in[NP], c[NP], joined, out, all;
  mg_str_t parts[NP];
  mg_buf_init(&joined, 0);
  mg_buf_init(&out, 0);
  mg_buf_init(&all, 0);
  for (int i = 0; i < NP; i++) {
    mg_buf_init(&in[i], 0);
    mg_buf_init(&c[i], 0);
  }
  mg_buf_append_str(&in[1], "x");
  for (int i = 0; i < 3000; i++) mg_buf_printf(&in[2], "node_cpu_seconds_total{cpu=\"%d\",mode=\"idle\"} %d\n", i % 8, i);
  for (int i = 0; i < 100000; i++) mg_buf_append_byte(&in[3], (unsigned char)((i * 2654435761u) >> 13));
  mg_buf_append(&in[4], in[2].data, 5000); /* repeats the start of piece 2 */
  for (int i = 0; i < 70000; i++) mg_buf_append_byte(&in[5], (unsigned char)('a' + i % 3));
  for (int i = 0; i < NP; i++) {
    REQUIRE(mg_wire_snappy_compress(in[i].data, in[i].len, &c[i]) == 0);
    CHECK(mg_wire_snappy_valid(c[i].data, c[i].len));
    parts[i] = mg_str_n(c[i].data, c[i].len);
    mg_buf_append(&all, in[i].data, in[i].len);
  }
  REQUIRE(mg_wire_snappy_join(parts, NP, &joined) == 0);
  CHECK(mg_wire_snappy_valid(joined.data, joined.len));
  REQUIRE(mg_wire_snappy_uncompress(joined.data, joined.len, &out) == 0);
  CHECK_MEM(out.data, out.len, all.data, all.len);
  /* One block joins to itself. */
  mg_buf_reset(&joined);
  mg_buf_reset(&out);
  REQUIRE(mg_wire_snappy_join(&parts[2], 1, &joined) == 0);
  CHECK_MEM(joined.data, joined.len, c[2].data, c[2].len);
  /* A malformed length preamble is refused. */
  mg_str_t bad = MG_STR_LIT("\xff\xff\xff\xff\xff\xff");
  CHECK_INT(mg_wire_snappy_join(&bad, 1, &joined), MG_EPARSE);
  CHECK(!mg_wire_snappy_valid(bad.p, bad.n));

  /* Two WriteRequests, compressed apart and joined: one request with both. */
  mg_buf_t w1, w2, z1, z2;
  mg_buf_init(&w1, 0);
  mg_buf_init(&w2, 0);
  mg_buf_init(&z1, 0);
  mg_buf_init(&z2, 0);
  mg_label_t l[] = {{MG_STR_LIT("__name__"), MG_STR_LIT("up")}, {MG_STR_LIT("job"), MG_STR_LIT("a")}};
  REQUIRE(mg_wire_append_series(&w1, l, 2, 1, 1000) == 0);
  REQUIRE(mg_wire_append_series(&w2, l, 2, 0, 2000) == 0);
  REQUIRE(mg_wire_snappy_compress(w1.data, w1.len, &z1) == 0);
  REQUIRE(mg_wire_snappy_compress(w2.data, w2.len, &z2) == 0);
  mg_str_t wz[] = {mg_str_n(z1.data, z1.len), mg_str_n(z2.data, z2.len)};
  mg_buf_reset(&joined);
  mg_buf_reset(&out);
  REQUIRE(mg_wire_snappy_join(wz, 2, &joined) == 0);
  REQUIRE(mg_wire_snappy_uncompress(joined.data, joined.len, &out) == 0);
  Prometheus__WriteRequest *wr = prometheus__write_request__unpack(NULL, out.len, (const uint8_t *)out.data);
  REQUIRE(wr != NULL && wr->n_timeseries == 2);
  CHECK_INT(wr->timeseries[0]->samples[0]->timestamp, 1000);
  CHECK_INT(wr->timeseries[1]->samples[0]->timestamp, 2000);
  prometheus__write_request__free_unpacked(wr, NULL);
  mg_buf_cleanup(&w1);
  mg_buf_cleanup(&w2);
  mg_buf_cleanup(&z1);
  mg_buf_cleanup(&z2);
  for (int i = 0; i < NP; i++) {
    mg_buf_cleanup(&in[i]);
    mg_buf_cleanup(&c[i]);
  }
  mg_buf_cleanup(&joined);
  mg_buf_cleanup(&out);
  mg_buf_cleanup(&all);
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
