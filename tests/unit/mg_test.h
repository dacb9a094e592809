/* mg_test: the tiny unit-test runner. Each test file defines tests with
 * MG_TEST(name) { ... } and ends with MG_TEST_MAIN(). Checks print both
 * sides on failure and keep going; the run ends with "N passed, N failed". */
#ifndef MG_TEST_H
#define MG_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*mg_test_fn)(void);
typedef struct mg_test_case {
  const char *name;
  mg_test_fn fn;
} mg_test_case_t;

#define MG_TEST_MAX 512
extern mg_test_case_t mg_test_cases_[MG_TEST_MAX];
extern int mg_test_ncases_;
extern int mg_test_failed_checks_;

#define MG_TEST(name)                                                        \
  static void test_##name(void);                                             \
  __attribute__((constructor)) static void register_##name(void) {           \
    if (mg_test_ncases_ < MG_TEST_MAX)                                       \
      mg_test_cases_[mg_test_ncases_++] = (mg_test_case_t){#name, test_##name}; \
  }                                                                          \
  static void test_##name(void)

#define MG_FAIL_(...)                                                        \
  do {                                                                       \
    fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                        \
    fprintf(stderr, __VA_ARGS__);                                            \
    fprintf(stderr, "\n");                                                   \
    mg_test_failed_checks_++;                                                \
  } while (0)

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) MG_FAIL_("CHECK(%s) failed", #cond);                        \
  } while (0)

#define CHECK_INT(a, b)                                                      \
  do {                                                                       \
    long long a_ = (long long)(a), b_ = (long long)(b);                      \
    if (a_ != b_) MG_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);        \
  } while (0)

#define CHECK_U64(a, b)                                                      \
  do {                                                                       \
    unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
    if (a_ != b_) MG_FAIL_("%s == %s: %llu != %llu", #a, #b, a_, b_);        \
  } while (0)

#define CHECK_DBL(a, b)                                                      \
  do {                                                                       \
    double a_ = (a), b_ = (b);                                               \
    if (!(a_ == b_ || (a_ != a_ && b_ != b_)))                               \
      MG_FAIL_("%s == %s: %.17g != %.17g", #a, #b, a_, b_);                  \
  } while (0)

#define CHECK_STR(a, b)                                                      \
  do {                                                                       \
    const char *a_ = (a), *b_ = (b);                                         \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                   \
      MG_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
  } while (0)

/* Print bytes readably (printable as is, the rest as \xNN), bounded. */
static inline void mg_test_print_bytes_(const void *p, size_t n) {
  const unsigned char *c = (const unsigned char *)p;
  fputc('"', stderr);
  for (size_t i = 0; i < n && i < 512; i++) {
    if (c[i] >= 0x20 && c[i] < 0x7f && c[i] != '"' && c[i] != '\\') fputc(c[i], stderr);
    else fprintf(stderr, "\\x%02x", c[i]);
  }
  fputs(n > 512 ? "\"..." : "\"", stderr);
}

#define CHECK_MEM(a, alen, b, blen)                                          \
  do {                                                                       \
    size_t al_ = (size_t)(alen), bl_ = (size_t)(blen);                       \
    if (al_ != bl_ || memcmp((a), (b), al_) != 0) {                          \
      fprintf(stderr, "  %s:%d: %s == %s: ", __FILE__, __LINE__, #a, #b);    \
      mg_test_print_bytes_((a), al_);                                        \
      fputs(" != ", stderr);                                                 \
      mg_test_print_bytes_((b), bl_);                                        \
      fputc('\n', stderr);                                                   \
      mg_test_failed_checks_++;                                              \
    }                                                                        \
  } while (0)

/* Fatal: stop the current test (return) on failure. */
#define REQUIRE(cond)                                                        \
  do {                                                                       \
    if (!(cond)) {                                                           \
      MG_FAIL_("REQUIRE(%s) failed", #cond);                                 \
      return;                                                                \
    }                                                                        \
  } while (0)

#define MG_TEST_MAIN()                                                       \
  mg_test_case_t mg_test_cases_[MG_TEST_MAX];                                \
  int mg_test_ncases_;                                                       \
  int mg_test_failed_checks_;                                                \
  int main(int argc, char **argv) {                                          \
    int passed = 0, failed = 0;                                              \
    const char *only = argc > 1 ? argv[1] : NULL;                            \
    for (int i = 0; i < mg_test_ncases_; i++) {                             \
      if (only && strcmp(only, mg_test_cases_[i].name) != 0) continue;       \
      int before = mg_test_failed_checks_;                                   \
      mg_test_cases_[i].fn();                                                \
      if (mg_test_failed_checks_ == before) {                                \
        passed++;                                                            \
        printf("ok   %s\n", mg_test_cases_[i].name);                         \
      } else {                                                               \
        failed++;                                                            \
        printf("FAIL %s\n", mg_test_cases_[i].name);                         \
      }                                                                      \
    }                                                                        \
    printf("%d passed, %d failed\n", passed, failed);                        \
    return failed ? 1 : 0;                                                   \
  }

#endif
