/* mg_relabel: compiles Prometheus relabel rules (regexes in RE2 syntax are
 * translated to PCRE2 patterns that match what Go's regexp matches) and
 * applies them to label builders. Owns the compiled rules and each
 * builder's memory. Must stay pure: no libuv, no clock, no I/O, no global
 * mutable state; apply allocates only while a builder grows. */
/* hashmod uses OpenSSL's MD5_* functions, deprecated in 3.0, because the
 * EVP interface of OpenSSL 3.0 allocates a provider context on every
 * digest init, and apply must not allocate. */
#define OPENSSL_SUPPRESS_DEPRECATED
#define PCRE2_CODE_UNIT_WIDTH 8

#include "mg_relabel.h"

#include <openssl/md5.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_parse.h"

/* ---- UTF-8, the way Go reads it ----------------------------------------- */

#define RUNE_ERROR 0xFFFDu
#define MAX_RUNE 0x10FFFFu

/* One rune as Go's utf8.DecodeRune reads it: a sequence that is invalid,
 * truncated, overlong, a surrogate or past U+10FFFF gives U+FFFD with
 * width 1 (a valid U+FFFD has width 3). n > 0. */
static uint32_t utf8_decode(const unsigned char *s, size_t n, size_t *w) {
  unsigned c = s[0];
  *w = 1;
  if (c < 0x80) return c;
  if (c < 0xC2 || c > 0xF4) return RUNE_ERROR;
  if (c < 0xE0) {
    if (n < 2 || (s[1] & 0xC0) != 0x80) return RUNE_ERROR;
    *w = 2;
    return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
  }
  unsigned lo = 0x80, hi = 0xBF;
  if (c == 0xE0) lo = 0xA0;
  else if (c == 0xED) hi = 0x9F;
  else if (c == 0xF0) lo = 0x90;
  else if (c == 0xF4) hi = 0x8F;
  if (n < 2 || s[1] < lo || s[1] > hi) return RUNE_ERROR;
  if (c < 0xF0) {
    if (n < 3 || (s[2] & 0xC0) != 0x80) return RUNE_ERROR;
    *w = 3;
    return ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
  }
  if (n < 4 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return RUNE_ERROR;
  *w = 4;
  return ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
}

static bool utf8_invalid_at(const unsigned char *s, size_t n, size_t *w) {
  return utf8_decode(s, n, w) == RUNE_ERROR && *w == 1;
}

/* Encodes a valid rune (not a surrogate); returns its length. */
static size_t utf8_encode(uint32_t c, char *o) {
  if (c < 0x80) {
    o[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    o[0] = (char)(0xC0 | (c >> 6));
    o[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    o[0] = (char)(0xE0 | (c >> 12));
    o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (c >> 18));
  o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  o[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

static bool utf8_valid(const char *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  size_t i = 0, w;
  while (i < n) {
    if (n - i >= 8) { /* label values are mostly ASCII: 8 bytes a step */
      uint64_t x;
      memcpy(&x, s + i, 8);
      if (!(x & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    if (s[i] < 0x80) {
      i++;
      continue;
    }
    if (utf8_invalid_at(s + i, n - i, &w)) return false;
    i += w;
  }
  return true;
}

/* ---- Unicode simple case mapping (Go's unicode.ToLower/ToUpper) ---------- */

/* Code points lo..hi, every stride-th from lo, map to c + delta. */
typedef struct case_range {
  uint32_t lo, hi;
  uint8_t stride;
  int32_t delta;
} case_range_t;

/* Generated from the simple (1:1) case mappings of Unicode 14.0's
 * UnicodeData.txt (see docs/relabeling.md, "Case tables"). Go's tables are
 * Unicode 15.0, which added no case pairs. */
/* 182 ranges, 1433 code points */
static const case_range_t case_lower[] = {
  {0x41, 0x5A, 1, 32}, {0xC0, 0xD6, 1, 32}, {0xD8, 0xDE, 1, 32}, {0x100, 0x12E, 2, 1},
  {0x130, 0x130, 1, -199}, {0x132, 0x136, 2, 1}, {0x139, 0x147, 2, 1}, {0x14A, 0x176, 2, 1},
  {0x178, 0x178, 1, -121}, {0x179, 0x17D, 2, 1}, {0x181, 0x181, 1, 210}, {0x182, 0x184, 2, 1},
  {0x186, 0x186, 1, 206}, {0x187, 0x187, 1, 1}, {0x189, 0x18A, 1, 205}, {0x18B, 0x18B, 1, 1},
  {0x18E, 0x18E, 1, 79}, {0x18F, 0x18F, 1, 202}, {0x190, 0x190, 1, 203}, {0x191, 0x191, 1, 1},
  {0x193, 0x193, 1, 205}, {0x194, 0x194, 1, 207}, {0x196, 0x196, 1, 211}, {0x197, 0x197, 1, 209},
  {0x198, 0x198, 1, 1}, {0x19C, 0x19C, 1, 211}, {0x19D, 0x19D, 1, 213}, {0x19F, 0x19F, 1, 214},
  {0x1A0, 0x1A4, 2, 1}, {0x1A6, 0x1A6, 1, 218}, {0x1A7, 0x1A7, 1, 1}, {0x1A9, 0x1A9, 1, 218},
  {0x1AC, 0x1AC, 1, 1}, {0x1AE, 0x1AE, 1, 218}, {0x1AF, 0x1AF, 1, 1}, {0x1B1, 0x1B2, 1, 217},
  {0x1B3, 0x1B5, 2, 1}, {0x1B7, 0x1B7, 1, 219}, {0x1B8, 0x1B8, 1, 1}, {0x1BC, 0x1BC, 1, 1},
  {0x1C4, 0x1C4, 1, 2}, {0x1C5, 0x1C5, 1, 1}, {0x1C7, 0x1C7, 1, 2}, {0x1C8, 0x1C8, 1, 1},
  {0x1CA, 0x1CA, 1, 2}, {0x1CB, 0x1DB, 2, 1}, {0x1DE, 0x1EE, 2, 1}, {0x1F1, 0x1F1, 1, 2},
  {0x1F2, 0x1F4, 2, 1}, {0x1F6, 0x1F6, 1, -97}, {0x1F7, 0x1F7, 1, -56}, {0x1F8, 0x21E, 2, 1},
  {0x220, 0x220, 1, -130}, {0x222, 0x232, 2, 1}, {0x23A, 0x23A, 1, 10795}, {0x23B, 0x23B, 1, 1},
  {0x23D, 0x23D, 1, -163}, {0x23E, 0x23E, 1, 10792}, {0x241, 0x241, 1, 1},
  {0x243, 0x243, 1, -195}, {0x244, 0x244, 1, 69}, {0x245, 0x245, 1, 71}, {0x246, 0x24E, 2, 1},
  {0x370, 0x372, 2, 1}, {0x376, 0x376, 1, 1}, {0x37F, 0x37F, 1, 116}, {0x386, 0x386, 1, 38},
  {0x388, 0x38A, 1, 37}, {0x38C, 0x38C, 1, 64}, {0x38E, 0x38F, 1, 63}, {0x391, 0x3A1, 1, 32},
  {0x3A3, 0x3AB, 1, 32}, {0x3CF, 0x3CF, 1, 8}, {0x3D8, 0x3EE, 2, 1}, {0x3F4, 0x3F4, 1, -60},
  {0x3F7, 0x3F7, 1, 1}, {0x3F9, 0x3F9, 1, -7}, {0x3FA, 0x3FA, 1, 1}, {0x3FD, 0x3FF, 1, -130},
  {0x400, 0x40F, 1, 80}, {0x410, 0x42F, 1, 32}, {0x460, 0x480, 2, 1}, {0x48A, 0x4BE, 2, 1},
  {0x4C0, 0x4C0, 1, 15}, {0x4C1, 0x4CD, 2, 1}, {0x4D0, 0x52E, 2, 1}, {0x531, 0x556, 1, 48},
  {0x10A0, 0x10C5, 1, 7264}, {0x10C7, 0x10C7, 1, 7264}, {0x10CD, 0x10CD, 1, 7264},
  {0x13A0, 0x13EF, 1, 38864}, {0x13F0, 0x13F5, 1, 8}, {0x1C90, 0x1CBA, 1, -3008},
  {0x1CBD, 0x1CBF, 1, -3008}, {0x1E00, 0x1E94, 2, 1}, {0x1E9E, 0x1E9E, 1, -7615},
  {0x1EA0, 0x1EFE, 2, 1}, {0x1F08, 0x1F0F, 1, -8}, {0x1F18, 0x1F1D, 1, -8},
  {0x1F28, 0x1F2F, 1, -8}, {0x1F38, 0x1F3F, 1, -8}, {0x1F48, 0x1F4D, 1, -8},
  {0x1F59, 0x1F5F, 2, -8}, {0x1F68, 0x1F6F, 1, -8}, {0x1F88, 0x1F8F, 1, -8},
  {0x1F98, 0x1F9F, 1, -8}, {0x1FA8, 0x1FAF, 1, -8}, {0x1FB8, 0x1FB9, 1, -8},
  {0x1FBA, 0x1FBB, 1, -74}, {0x1FBC, 0x1FBC, 1, -9}, {0x1FC8, 0x1FCB, 1, -86},
  {0x1FCC, 0x1FCC, 1, -9}, {0x1FD8, 0x1FD9, 1, -8}, {0x1FDA, 0x1FDB, 1, -100},
  {0x1FE8, 0x1FE9, 1, -8}, {0x1FEA, 0x1FEB, 1, -112}, {0x1FEC, 0x1FEC, 1, -7},
  {0x1FF8, 0x1FF9, 1, -128}, {0x1FFA, 0x1FFB, 1, -126}, {0x1FFC, 0x1FFC, 1, -9},
  {0x2126, 0x2126, 1, -7517}, {0x212A, 0x212A, 1, -8383}, {0x212B, 0x212B, 1, -8262},
  {0x2132, 0x2132, 1, 28}, {0x2160, 0x216F, 1, 16}, {0x2183, 0x2183, 1, 1},
  {0x24B6, 0x24CF, 1, 26}, {0x2C00, 0x2C2F, 1, 48}, {0x2C60, 0x2C60, 1, 1},
  {0x2C62, 0x2C62, 1, -10743}, {0x2C63, 0x2C63, 1, -3814}, {0x2C64, 0x2C64, 1, -10727},
  {0x2C67, 0x2C6B, 2, 1}, {0x2C6D, 0x2C6D, 1, -10780}, {0x2C6E, 0x2C6E, 1, -10749},
  {0x2C6F, 0x2C6F, 1, -10783}, {0x2C70, 0x2C70, 1, -10782}, {0x2C72, 0x2C72, 1, 1},
  {0x2C75, 0x2C75, 1, 1}, {0x2C7E, 0x2C7F, 1, -10815}, {0x2C80, 0x2CE2, 2, 1},
  {0x2CEB, 0x2CED, 2, 1}, {0x2CF2, 0x2CF2, 1, 1}, {0xA640, 0xA66C, 2, 1}, {0xA680, 0xA69A, 2, 1},
  {0xA722, 0xA72E, 2, 1}, {0xA732, 0xA76E, 2, 1}, {0xA779, 0xA77B, 2, 1},
  {0xA77D, 0xA77D, 1, -35332}, {0xA77E, 0xA786, 2, 1}, {0xA78B, 0xA78B, 1, 1},
  {0xA78D, 0xA78D, 1, -42280}, {0xA790, 0xA792, 2, 1}, {0xA796, 0xA7A8, 2, 1},
  {0xA7AA, 0xA7AA, 1, -42308}, {0xA7AB, 0xA7AB, 1, -42319}, {0xA7AC, 0xA7AC, 1, -42315},
  {0xA7AD, 0xA7AD, 1, -42305}, {0xA7AE, 0xA7AE, 1, -42308}, {0xA7B0, 0xA7B0, 1, -42258},
  {0xA7B1, 0xA7B1, 1, -42282}, {0xA7B2, 0xA7B2, 1, -42261}, {0xA7B3, 0xA7B3, 1, 928},
  {0xA7B4, 0xA7C2, 2, 1}, {0xA7C4, 0xA7C4, 1, -48}, {0xA7C5, 0xA7C5, 1, -42307},
  {0xA7C6, 0xA7C6, 1, -35384}, {0xA7C7, 0xA7C9, 2, 1}, {0xA7D0, 0xA7D0, 1, 1},
  {0xA7D6, 0xA7D8, 2, 1}, {0xA7F5, 0xA7F5, 1, 1}, {0xFF21, 0xFF3A, 1, 32},
  {0x10400, 0x10427, 1, 40}, {0x104B0, 0x104D3, 1, 40}, {0x10570, 0x1057A, 1, 39},
  {0x1057C, 0x1058A, 1, 39}, {0x1058C, 0x10592, 1, 39}, {0x10594, 0x10595, 1, 39},
  {0x10C80, 0x10CB2, 1, 64}, {0x118A0, 0x118BF, 1, 32}, {0x16E40, 0x16E5F, 1, 32},
  {0x1E900, 0x1E921, 1, 34},
};
/* 200 ranges, 1450 code points */
static const case_range_t case_upper[] = {
  {0x61, 0x7A, 1, -32}, {0xB5, 0xB5, 1, 743}, {0xE0, 0xF6, 1, -32}, {0xF8, 0xFE, 1, -32},
  {0xFF, 0xFF, 1, 121}, {0x101, 0x12F, 2, -1}, {0x131, 0x131, 1, -232}, {0x133, 0x137, 2, -1},
  {0x13A, 0x148, 2, -1}, {0x14B, 0x177, 2, -1}, {0x17A, 0x17E, 2, -1}, {0x17F, 0x17F, 1, -300},
  {0x180, 0x180, 1, 195}, {0x183, 0x185, 2, -1}, {0x188, 0x188, 1, -1}, {0x18C, 0x18C, 1, -1},
  {0x192, 0x192, 1, -1}, {0x195, 0x195, 1, 97}, {0x199, 0x199, 1, -1}, {0x19A, 0x19A, 1, 163},
  {0x19E, 0x19E, 1, 130}, {0x1A1, 0x1A5, 2, -1}, {0x1A8, 0x1A8, 1, -1}, {0x1AD, 0x1AD, 1, -1},
  {0x1B0, 0x1B0, 1, -1}, {0x1B4, 0x1B6, 2, -1}, {0x1B9, 0x1B9, 1, -1}, {0x1BD, 0x1BD, 1, -1},
  {0x1BF, 0x1BF, 1, 56}, {0x1C5, 0x1C5, 1, -1}, {0x1C6, 0x1C6, 1, -2}, {0x1C8, 0x1C8, 1, -1},
  {0x1C9, 0x1C9, 1, -2}, {0x1CB, 0x1CB, 1, -1}, {0x1CC, 0x1CC, 1, -2}, {0x1CE, 0x1DC, 2, -1},
  {0x1DD, 0x1DD, 1, -79}, {0x1DF, 0x1EF, 2, -1}, {0x1F2, 0x1F2, 1, -1}, {0x1F3, 0x1F3, 1, -2},
  {0x1F5, 0x1F5, 1, -1}, {0x1F9, 0x21F, 2, -1}, {0x223, 0x233, 2, -1}, {0x23C, 0x23C, 1, -1},
  {0x23F, 0x240, 1, 10815}, {0x242, 0x242, 1, -1}, {0x247, 0x24F, 2, -1},
  {0x250, 0x250, 1, 10783}, {0x251, 0x251, 1, 10780}, {0x252, 0x252, 1, 10782},
  {0x253, 0x253, 1, -210}, {0x254, 0x254, 1, -206}, {0x256, 0x257, 1, -205},
  {0x259, 0x259, 1, -202}, {0x25B, 0x25B, 1, -203}, {0x25C, 0x25C, 1, 42319},
  {0x260, 0x260, 1, -205}, {0x261, 0x261, 1, 42315}, {0x263, 0x263, 1, -207},
  {0x265, 0x265, 1, 42280}, {0x266, 0x266, 1, 42308}, {0x268, 0x268, 1, -209},
  {0x269, 0x269, 1, -211}, {0x26A, 0x26A, 1, 42308}, {0x26B, 0x26B, 1, 10743},
  {0x26C, 0x26C, 1, 42305}, {0x26F, 0x26F, 1, -211}, {0x271, 0x271, 1, 10749},
  {0x272, 0x272, 1, -213}, {0x275, 0x275, 1, -214}, {0x27D, 0x27D, 1, 10727},
  {0x280, 0x280, 1, -218}, {0x282, 0x282, 1, 42307}, {0x283, 0x283, 1, -218},
  {0x287, 0x287, 1, 42282}, {0x288, 0x288, 1, -218}, {0x289, 0x289, 1, -69},
  {0x28A, 0x28B, 1, -217}, {0x28C, 0x28C, 1, -71}, {0x292, 0x292, 1, -219},
  {0x29D, 0x29D, 1, 42261}, {0x29E, 0x29E, 1, 42258}, {0x345, 0x345, 1, 84},
  {0x371, 0x373, 2, -1}, {0x377, 0x377, 1, -1}, {0x37B, 0x37D, 1, 130}, {0x3AC, 0x3AC, 1, -38},
  {0x3AD, 0x3AF, 1, -37}, {0x3B1, 0x3C1, 1, -32}, {0x3C2, 0x3C2, 1, -31}, {0x3C3, 0x3CB, 1, -32},
  {0x3CC, 0x3CC, 1, -64}, {0x3CD, 0x3CE, 1, -63}, {0x3D0, 0x3D0, 1, -62}, {0x3D1, 0x3D1, 1, -57},
  {0x3D5, 0x3D5, 1, -47}, {0x3D6, 0x3D6, 1, -54}, {0x3D7, 0x3D7, 1, -8}, {0x3D9, 0x3EF, 2, -1},
  {0x3F0, 0x3F0, 1, -86}, {0x3F1, 0x3F1, 1, -80}, {0x3F2, 0x3F2, 1, 7}, {0x3F3, 0x3F3, 1, -116},
  {0x3F5, 0x3F5, 1, -96}, {0x3F8, 0x3F8, 1, -1}, {0x3FB, 0x3FB, 1, -1}, {0x430, 0x44F, 1, -32},
  {0x450, 0x45F, 1, -80}, {0x461, 0x481, 2, -1}, {0x48B, 0x4BF, 2, -1}, {0x4C2, 0x4CE, 2, -1},
  {0x4CF, 0x4CF, 1, -15}, {0x4D1, 0x52F, 2, -1}, {0x561, 0x586, 1, -48},
  {0x10D0, 0x10FA, 1, 3008}, {0x10FD, 0x10FF, 1, 3008}, {0x13F8, 0x13FD, 1, -8},
  {0x1C80, 0x1C80, 1, -6254}, {0x1C81, 0x1C81, 1, -6253}, {0x1C82, 0x1C82, 1, -6244},
  {0x1C83, 0x1C84, 1, -6242}, {0x1C85, 0x1C85, 1, -6243}, {0x1C86, 0x1C86, 1, -6236},
  {0x1C87, 0x1C87, 1, -6181}, {0x1C88, 0x1C88, 1, 35266}, {0x1D79, 0x1D79, 1, 35332},
  {0x1D7D, 0x1D7D, 1, 3814}, {0x1D8E, 0x1D8E, 1, 35384}, {0x1E01, 0x1E95, 2, -1},
  {0x1E9B, 0x1E9B, 1, -59}, {0x1EA1, 0x1EFF, 2, -1}, {0x1F00, 0x1F07, 1, 8},
  {0x1F10, 0x1F15, 1, 8}, {0x1F20, 0x1F27, 1, 8}, {0x1F30, 0x1F37, 1, 8}, {0x1F40, 0x1F45, 1, 8},
  {0x1F51, 0x1F57, 2, 8}, {0x1F60, 0x1F67, 1, 8}, {0x1F70, 0x1F71, 1, 74},
  {0x1F72, 0x1F75, 1, 86}, {0x1F76, 0x1F77, 1, 100}, {0x1F78, 0x1F79, 1, 128},
  {0x1F7A, 0x1F7B, 1, 112}, {0x1F7C, 0x1F7D, 1, 126}, {0x1F80, 0x1F87, 1, 8},
  {0x1F90, 0x1F97, 1, 8}, {0x1FA0, 0x1FA7, 1, 8}, {0x1FB0, 0x1FB1, 1, 8}, {0x1FB3, 0x1FB3, 1, 9},
  {0x1FBE, 0x1FBE, 1, -7205}, {0x1FC3, 0x1FC3, 1, 9}, {0x1FD0, 0x1FD1, 1, 8},
  {0x1FE0, 0x1FE1, 1, 8}, {0x1FE5, 0x1FE5, 1, 7}, {0x1FF3, 0x1FF3, 1, 9},
  {0x214E, 0x214E, 1, -28}, {0x2170, 0x217F, 1, -16}, {0x2184, 0x2184, 1, -1},
  {0x24D0, 0x24E9, 1, -26}, {0x2C30, 0x2C5F, 1, -48}, {0x2C61, 0x2C61, 1, -1},
  {0x2C65, 0x2C65, 1, -10795}, {0x2C66, 0x2C66, 1, -10792}, {0x2C68, 0x2C6C, 2, -1},
  {0x2C73, 0x2C73, 1, -1}, {0x2C76, 0x2C76, 1, -1}, {0x2C81, 0x2CE3, 2, -1},
  {0x2CEC, 0x2CEE, 2, -1}, {0x2CF3, 0x2CF3, 1, -1}, {0x2D00, 0x2D25, 1, -7264},
  {0x2D27, 0x2D27, 1, -7264}, {0x2D2D, 0x2D2D, 1, -7264}, {0xA641, 0xA66D, 2, -1},
  {0xA681, 0xA69B, 2, -1}, {0xA723, 0xA72F, 2, -1}, {0xA733, 0xA76F, 2, -1},
  {0xA77A, 0xA77C, 2, -1}, {0xA77F, 0xA787, 2, -1}, {0xA78C, 0xA78C, 1, -1},
  {0xA791, 0xA793, 2, -1}, {0xA794, 0xA794, 1, 48}, {0xA797, 0xA7A9, 2, -1},
  {0xA7B5, 0xA7C3, 2, -1}, {0xA7C8, 0xA7CA, 2, -1}, {0xA7D1, 0xA7D1, 1, -1},
  {0xA7D7, 0xA7D9, 2, -1}, {0xA7F6, 0xA7F6, 1, -1}, {0xAB53, 0xAB53, 1, -928},
  {0xAB70, 0xABBF, 1, -38864}, {0xFF41, 0xFF5A, 1, -32}, {0x10428, 0x1044F, 1, -40},
  {0x104D8, 0x104FB, 1, -40}, {0x10597, 0x105A1, 1, -39}, {0x105A3, 0x105B1, 1, -39},
  {0x105B3, 0x105B9, 1, -39}, {0x105BB, 0x105BC, 1, -39}, {0x10CC0, 0x10CF2, 1, -64},
  {0x118C0, 0x118DF, 1, -32}, {0x16E60, 0x16E7F, 1, -32}, {0x1E922, 0x1E943, 1, -34},
};

static uint32_t case_map(const case_range_t *t, size_t n, uint32_t c) {
  size_t a = 0, b = n;
  while (a < b) {
    size_t m = a + (b - a) / 2;
    if (c < t[m].lo) b = m;
    else if (c > t[m].hi) a = m + 1;
    else return (c - t[m].lo) % t[m].stride ? c : (uint32_t)((int32_t)c + t[m].delta);
  }
  return c;
}

static uint32_t rune_lower(uint32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
  return case_map(case_lower, sizeof case_lower / sizeof case_lower[0], c);
}

static uint32_t rune_upper(uint32_t c) {
  if (c < 0x80) return c >= 'a' && c <= 'z' ? c - 32 : c;
  return case_map(case_upper, sizeof case_upper / sizeof case_upper[0], c);
}

/* strings.ToLower/ToUpper: each rune mapped, each invalid byte becomes
 * U+FFFD (as Go's strings.Map writes it). With out == NULL only measures. */
static size_t map_case(const char *p, size_t n, bool upper, char *out) {
  const unsigned char *s = (const unsigned char *)p;
  size_t i = 0, o = 0, w;
  char tmp[4];
  while (i < n) {
    uint32_t c = utf8_decode(s + i, n - i, &w);
    i += w;
    c = upper ? rune_upper(c) : rune_lower(c);
    size_t k = utf8_encode(c, out ? out + o : tmp);
    o += k;
  }
  return o;
}

/* ---- RE2 syntax to PCRE2 ---------------------------------------------------
 * Prometheus compiles "^(?s:" + regex + ")$" with Go's regexp (RE2 syntax,
 * leftmost-first, UTF-8). We parse that same string the way Go's
 * regexp/syntax does, so the same patterns are accepted and refused, and
 * emit a PCRE2 pattern in which every construct has Go's meaning spelled
 * out: ^ $ become \A \z, . and \d \s \w and POSIX classes become explicit
 * ASCII sets, (?i) wraps each letter or class, \p{Script} becomes
 * \p{sc:Script}, every quantified item is grouped. Literals are written as
 * \x{..}, so no PCRE2 metacharacter can leak through. */

enum { RF_FOLD = 1, RF_MULTI = 2, RF_DOTNL = 4, RF_UNGREEDY = 8 };

#define RX_MAX_DEPTH 1000    /* Go's maxHeight is 1000 too */
#define RX_MAX_REPEAT 1000   /* Go: counts and nested counts up to 1000 */
#define RX_MAX_REGEX 65536   /* bytes of one regex as written */
#define RX_MAX_OUT (4u << 20) /* bytes of the translated pattern */

static const char *const go_categories[] = {
    "C",  "Cc", "Cf", "Co", "Cs", "L",  "Ll", "Lm", "Lo", "Lt", "Lu", "M",
    "Mc", "Me", "Mn", "N",  "Nd", "Nl", "No", "P",  "Pc", "Pd", "Pe", "Pf",
    "Pi", "Po", "Ps", "S",  "Sc", "Sk", "Sm", "So", "Z",  "Zl", "Zp", "Zs",
};

/* Go's unicode.Scripts (Unicode 15.0). */
static const char *const go_scripts[] = {
  "Adlam", "Ahom", "Anatolian_Hieroglyphs", "Arabic", "Armenian", "Avestan", "Balinese",
  "Bamum", "Bassa_Vah", "Batak", "Bengali", "Bhaiksuki", "Bopomofo", "Brahmi", "Braille",
  "Buginese", "Buhid", "Canadian_Aboriginal", "Carian", "Caucasian_Albanian", "Chakma", "Cham",
  "Cherokee", "Chorasmian", "Common", "Coptic", "Cuneiform", "Cypriot", "Cypro_Minoan",
  "Cyrillic", "Deseret", "Devanagari", "Dives_Akuru", "Dogra", "Duployan",
  "Egyptian_Hieroglyphs", "Elbasan", "Elymaic", "Ethiopic", "Georgian", "Glagolitic", "Gothic",
  "Grantha", "Greek", "Gujarati", "Gunjala_Gondi", "Gurmukhi", "Han", "Hangul",
  "Hanifi_Rohingya", "Hanunoo", "Hatran", "Hebrew", "Hiragana", "Imperial_Aramaic", "Inherited",
  "Inscriptional_Pahlavi", "Inscriptional_Parthian", "Javanese", "Kaithi", "Kannada",
  "Katakana", "Kawi", "Kayah_Li", "Kharoshthi", "Khitan_Small_Script", "Khmer", "Khojki",
  "Khudawadi", "Lao", "Latin", "Lepcha", "Limbu", "Linear_A", "Linear_B", "Lisu", "Lycian",
  "Lydian", "Mahajani", "Makasar", "Malayalam", "Mandaic", "Manichaean", "Marchen",
  "Masaram_Gondi", "Medefaidrin", "Meetei_Mayek", "Mende_Kikakui", "Meroitic_Cursive",
  "Meroitic_Hieroglyphs", "Miao", "Modi", "Mongolian", "Mro", "Multani", "Myanmar", "Nabataean",
  "Nag_Mundari", "Nandinagari", "New_Tai_Lue", "Newa", "Nko", "Nushu", "Nyiakeng_Puachue_Hmong",
  "Ogham", "Ol_Chiki", "Old_Hungarian", "Old_Italic", "Old_North_Arabian", "Old_Permic",
  "Old_Persian", "Old_Sogdian", "Old_South_Arabian", "Old_Turkic", "Old_Uyghur", "Oriya",
  "Osage", "Osmanya", "Pahawh_Hmong", "Palmyrene", "Pau_Cin_Hau", "Phags_Pa", "Phoenician",
  "Psalter_Pahlavi", "Rejang", "Runic", "Samaritan", "Saurashtra", "Sharada", "Shavian",
  "Siddham", "SignWriting", "Sinhala", "Sogdian", "Sora_Sompeng", "Soyombo", "Sundanese",
  "Syloti_Nagri", "Syriac", "Tagalog", "Tagbanwa", "Tai_Le", "Tai_Tham", "Tai_Viet", "Takri",
  "Tamil", "Tangsa", "Tangut", "Telugu", "Thaana", "Thai", "Tibetan", "Tifinagh", "Tirhuta",
  "Toto", "Ugaritic", "Vai", "Vithkuqi", "Wancho", "Warang_Citi", "Yezidi", "Yi",
  "Zanabazar_Square",
};

/* Names that have case-fold tables in Go (unicode.FoldCategory and
 * FoldScript): under (?i) Go adds their case variants from outside the
 * class, which PCRE2 cannot express, so such patterns are refused. */
static const char *const go_fold_tables[] = {"L", "Ll", "Lt", "Lu", "M", "Mn", "Common", "Greek", "Inherited"};

static bool in_list(const char *const *l, size_t n, const char *s, size_t len) {
  for (size_t i = 0; i < n; i++)
    if (strlen(l[i]) == len && memcmp(l[i], s, len) == 0) return true;
  return false;
}
#define IN_LIST(l, s, len) in_list(l, sizeof l / sizeof l[0], s, len)

/* Go's ASCII classes: \d \s \w and [:name:], as inclusive range pairs. */
typedef struct cgroup {
  const char *name;
  uint8_t n; /* pairs */
  uint32_t r[8];
} cgroup_t;

static const cgroup_t perl_groups[] = {
    {"d", 1, {'0', '9'}},
    {"s", 3, {'\t', '\n', '\f', '\r', ' ', ' '}}, /* no \v: Go's \s is Perl's old one */
    {"w", 4, {'0', '9', 'A', 'Z', '_', '_', 'a', 'z'}},
};

static const cgroup_t posix_groups[] = {
    {"alnum", 3, {'0', '9', 'A', 'Z', 'a', 'z'}},
    {"alpha", 2, {'A', 'Z', 'a', 'z'}},
    {"ascii", 1, {0, 0x7F}},
    {"blank", 2, {'\t', '\t', ' ', ' '}},
    {"cntrl", 2, {0, 0x1F, 0x7F, 0x7F}},
    {"digit", 1, {'0', '9'}},
    {"graph", 1, {'!', '~'}},
    {"lower", 1, {'a', 'z'}},
    {"print", 1, {' ', '~'}},
    {"punct", 4, {'!', '/', ':', '@', '[', '`', '{', '~'}},
    {"space", 2, {'\t', '\r', ' ', ' '}},
    {"upper", 1, {'A', 'Z'}},
    {"word", 4, {'0', '9', 'A', 'Z', '_', '_', 'a', 'z'}},
    {"xdigit", 3, {'0', '9', 'A', 'F', 'a', 'f'}},
};

/* A growable list of inclusive code point ranges. */
typedef struct ranges {
  uint32_t *r; /* pairs */
  size_t n, cap;
} ranges_t;

static int ranges_add(ranges_t *rs, uint32_t lo, uint32_t hi) {
  if (rs->n == rs->cap) {
    size_t ncap = rs->cap ? rs->cap * 2 : 16;
    uint32_t *r = mg_reallocarray(rs->r, ncap, 2 * sizeof *r);
    if (!r) return MG_ENOMEM;
    rs->r = r;
    rs->cap = ncap;
  }
  rs->r[2 * rs->n] = lo;
  rs->r[2 * rs->n + 1] = hi;
  rs->n++;
  return 0;
}

/* Sort and merge (lists here are short: insertion sort). */
static void ranges_normalize(ranges_t *rs) {
  for (size_t i = 1; i < rs->n; i++) {
    uint32_t lo = rs->r[2 * i], hi = rs->r[2 * i + 1];
    size_t j = i;
    while (j > 0 && rs->r[2 * (j - 1)] > lo) {
      rs->r[2 * j] = rs->r[2 * (j - 1)];
      rs->r[2 * j + 1] = rs->r[2 * (j - 1) + 1];
      j--;
    }
    rs->r[2 * j] = lo;
    rs->r[2 * j + 1] = hi;
  }
  size_t o = 0;
  for (size_t i = 0; i < rs->n; i++) {
    if (o && rs->r[2 * i] <= rs->r[2 * (o - 1) + 1] + 1) {
      if (rs->r[2 * i + 1] > rs->r[2 * (o - 1) + 1]) rs->r[2 * (o - 1) + 1] = rs->r[2 * i + 1];
    } else {
      rs->r[2 * o] = rs->r[2 * i];
      rs->r[2 * o + 1] = rs->r[2 * i + 1];
      o++;
    }
  }
  rs->n = o;
}

/* Add the group (or its complement) to out, with Go's (?i) rule: the
 * group's case variants are added before complementing. The groups are
 * ASCII, so the variants are the other ASCII case plus U+017F (long s)
 * for s and U+212A (Kelvin) for k, the only non-ASCII runes whose simple
 * case folding reaches ASCII. */
static int group_add(ranges_t *out, const cgroup_t *g, bool negate, bool fold) {
  ranges_t t = {0};
  int rc = 0;
  for (size_t i = 0; i < g->n && !rc; i++) rc = ranges_add(&t, g->r[2 * i], g->r[2 * i + 1]);
  if (fold && !rc) {
    bool s = false, k = false;
    for (size_t i = 0; i < g->n && !rc; i++) {
      uint32_t lo = g->r[2 * i], hi = g->r[2 * i + 1];
      for (uint32_t c = lo; c <= hi && !rc; c++) {
        uint32_t l = c | 0x20;
        if (l >= 'a' && l <= 'z') {
          rc = ranges_add(&t, c ^ 0x20, c ^ 0x20);
          s |= l == 's';
          k |= l == 'k';
        }
      }
    }
    if (s && !rc) rc = ranges_add(&t, 0x17F, 0x17F);
    if (k && !rc) rc = ranges_add(&t, 0x212A, 0x212A);
  }
  if (!rc) ranges_normalize(&t);
  if (!negate) {
    for (size_t i = 0; i < t.n && !rc; i++) rc = ranges_add(out, t.r[2 * i], t.r[2 * i + 1]);
  } else {
    uint32_t next = 0;
    for (size_t i = 0; i < t.n && !rc; i++) {
      if (t.r[2 * i] > next) rc = ranges_add(out, next, t.r[2 * i] - 1);
      next = t.r[2 * i + 1] + 1;
    }
    if (!rc && next <= MAX_RUNE) rc = ranges_add(out, next, MAX_RUNE);
  }
  mg_free(t.r);
  return rc;
}

/* A character class being parsed. `fold` holds what PCRE2 may case-fold
 * itself (literals, ranges, positive ASCII groups) and `props` the \p
 * items; `exact` holds sets already folded the Go way (negated groups under
 * (?i)) that must not be folded again. */
typedef struct cls {
  ranges_t fold, exact;
  mg_buf_t props;
} cls_t;

static void cls_cleanup(cls_t *c) {
  mg_free(c->fold.r);
  mg_free(c->exact.r);
  mg_buf_cleanup(&c->props);
}

/* One parse level: the top, or an open group. */
typedef struct rlevel {
  int flags;         /* restored at ')' */
  size_t open_at;    /* output offset of the group's '(' */
  uint32_t max_need; /* over the completed items of this level */
  bool have_atom;    /* an item a repetition may apply to */
  size_t atom_at;    /* its output offset */
  bool atom_wrap;    /* not one PCRE2 item a quantifier may follow */
  uint32_t atom_need;
} rlevel_t;

typedef struct rxp {
  const char *s; /* the anchored pattern as Go sees it */
  size_t n, i;
  mg_buf_t *out;
  int flags;
  rlevel_t *lv;
  size_t depth;
  bool last_repeat;
  bool top_alt;   /* '|' at the top level: matches need not span the subject */
  bool end_multi; /* the closing $ was read under (?m) (a ")(?m)(" regex) */
  uint32_t ncap;
  char **names; /* [cap], NULL for unnamed */
  size_t names_cap;
  char *err;
  size_t errlen;
} rxp_t;

/* Go's error texts (regexp/syntax ErrorCode strings). */
#define E_CHAR_RANGE "invalid character class range"
#define E_ESCAPE "invalid escape sequence"
#define E_NAMED "invalid named capture"
#define E_PERL "invalid or unsupported Perl syntax"
#define E_REPEAT_OP "invalid nested repetition operator"
#define E_REPEAT_SIZE "invalid repeat count"
#define E_UTF8 "invalid UTF-8"
#define E_BRACKET "missing closing ]"
#define E_PAREN "missing closing )"
#define E_REPEAT_ARG "missing argument to repetition operator"
#define E_BACKSLASH "trailing backslash at end of expression"
#define E_UNEXPECTED "unexpected )"
#define E_DEPTH "expression nests too deeply"
#define E_LARGE "expression too large"

/* Appends s[0..n) to a one-line message, escaping what would break it. */
static void msg_quote(char *dst, size_t cap, const char *s, size_t n) {
  size_t o = strlen(dst);
  for (size_t i = 0; i < n && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n') o += (size_t)snprintf(dst + o, cap - o, "\\n");
    else if (c < 0x20 || c == 0x7F) o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
    else dst[o++] = (char)c;
  }
  if (o < cap) dst[o] = 0;
}

/* Sets the message "<what>: `fragment`<hint>" and returns MG_ECONFIG. */
static int rx_fail(rxp_t *x, const char *what, size_t from, size_t to, const char *hint) {
  if (!x->err || !x->errlen) return MG_ECONFIG;
  if (to > x->n) to = x->n;
  if (from > to) from = to;
  snprintf(x->err, x->errlen, "%s: `", what);
  size_t len = to - from;
  msg_quote(x->err, x->errlen, x->s + from, len > 80 ? 80 : len);
  size_t o = strlen(x->err);
  snprintf(x->err + o, x->errlen - o, "%s%s%s", len > 80 ? "..." : "", "`", hint ? hint : "");
  return MG_ECONFIG;
}

#define HINT_RE2 " (Prometheus regexes are RE2: no backreferences, lookaround, atomic groups or possessive quantifiers)"

static int emit(rxp_t *x, const char *s) {
  int rc = mg_buf_append_str(x->out, s);
  return rc == MG_ETOOBIG ? rx_fail(x, E_LARGE, 0, x->n, NULL) : rc;
}

static int emit_rune(rxp_t *x, uint32_t c) {
  char b[16];
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
    b[0] = (char)c;
    b[1] = 0;
  } else {
    snprintf(b, sizeof b, "\\x{%x}", (unsigned)c);
  }
  return emit(x, b);
}

/* A new item starts: the previous one of this level is complete. */
static void atom_begin(rxp_t *x) {
  rlevel_t *l = &x->lv[x->depth];
  if (l->have_atom && l->atom_need > l->max_need) l->max_need = l->atom_need;
  l->have_atom = true;
  l->atom_at = x->out->len;
  l->atom_wrap = false;
  l->atom_need = 0;
}

/* The item just begun is an assertion, or several PCRE2 items. */
static void atom_needs_group(rxp_t *x) { x->lv[x->depth].atom_wrap = true; }

static int rx_literal(rxp_t *x, uint32_t c) {
  atom_begin(x);
  /* Go decodes no input to a surrogate (invalid UTF-8 reads as U+FFFD), so
   * \x{D800} matches nothing; PCRE2 refuses surrogates in UTF mode. */
  if (c >= 0xD800 && c <= 0xDFFF) {
    atom_needs_group(x);
    return emit(x, "(?!)");
  }
  bool cased = c >= 0x80 || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  if (!(x->flags & RF_FOLD) || !cased) return emit_rune(x, c);
  int rc = emit(x, "(?i:");
  if (!rc) rc = emit_rune(x, c);
  if (!rc) rc = emit(x, ")");
  return rc;
}

static int emit_hex(rxp_t *x, uint32_t c) {
  char b[16];
  snprintf(b, sizeof b, "\\x{%x}", (unsigned)c);
  return emit(x, b);
}

static bool ranges_empty(const ranges_t *rs) {
  for (size_t i = 0; i < rs->n; i++)
    if (rs->r[2 * i] < 0xD800 || rs->r[2 * i + 1] > 0xDFFF) return false;
  return true;
}

/* Writes ranges as PCRE2 class items, leaving out surrogates. */
static int emit_ranges(rxp_t *x, const ranges_t *rs) {
  int rc = 0;
  for (size_t i = 0; i < rs->n && !rc; i++) {
    uint32_t lo = rs->r[2 * i], hi = rs->r[2 * i + 1];
    uint32_t parts[4];
    size_t np = 0;
    if (lo < 0xD800) {
      parts[np++] = lo;
      parts[np++] = hi < 0xD800 ? hi : 0xD7FF;
    }
    if (hi > 0xDFFF) {
      parts[np++] = lo > 0xDFFF ? lo : 0xE000;
      parts[np++] = hi;
    }
    for (size_t k = 0; k < np && !rc; k += 2) {
      rc = emit_hex(x, parts[k]);
      if (!rc && parts[k + 1] != parts[k]) {
        rc = emit(x, "-");
        if (!rc) rc = emit_hex(x, parts[k + 1]);
      }
    }
  }
  return rc;
}

/* Emits a parsed class as one PCRE2 item (see cls_t). */
static int cls_emit(rxp_t *x, cls_t *c, bool negate) {
  bool fold = x->flags & RF_FOLD;
  bool have_f = !ranges_empty(&c->fold) || c->props.len > 0;
  bool have_e = !ranges_empty(&c->exact);
  int rc = 0;
  atom_begin(x);
  if (!have_f && !have_e) {
    atom_needs_group(x);
    return emit(x, negate ? "[\\x{0}-\\x{10ffff}]" : "(?!)");
  }
  if (have_e) rc = emit(x, negate ? "(?:(?!" : "(?:");
  if (have_f && !rc) {
    if (fold) rc = emit(x, "(?i:");
    if (!rc) rc = emit(x, negate && !have_e ? "[^" : "[");
    if (!rc) rc = emit_ranges(x, &c->fold);
    if (!rc && c->props.len) rc = emit(x, c->props.data);
    if (!rc) rc = emit(x, "]");
    if (fold && !rc) rc = emit(x, ")");
    if (have_e && !rc) rc = emit(x, "|");
  }
  if (have_e && !rc) {
    rc = emit(x, "[");
    if (!rc) rc = emit_ranges(x, &c->exact);
    if (!rc) rc = emit(x, negate ? "])[\\x{0}-\\x{10ffff}])" : "])");
  }
  return rc;
}

static int cls_group(rxp_t *x, cls_t *c, const cgroup_t *g, bool negate) {
  bool fold = x->flags & RF_FOLD;
  /* A positive group under (?i) is folded by PCRE2 exactly as Go folds it. */
  if (!negate || !fold) return group_add(&c->fold, g, negate, false);
  return group_add(&c->exact, g, true, true);
}

/* \p{Name}, \pN, \P.., \p{^Name} at x->i (Go's parseUnicodeClass). */
static int cls_unicode(rxp_t *x, cls_t *c) {
  size_t start = x->i;
  bool neg = x->s[start + 1] == 'P';
  size_t k = start + 2, end, nstart, nlen;
  if (k >= x->n) return rx_fail(x, E_CHAR_RANGE, start, k, NULL);
  if (x->s[k] != '{') {
    size_t w;
    utf8_decode((const unsigned char *)x->s + k, x->n - k, &w);
    nstart = k;
    nlen = w;
    end = k + w;
  } else {
    const char *cb = memchr(x->s + start, '}', x->n - start);
    if (!cb) return rx_fail(x, E_CHAR_RANGE, start, x->n, NULL);
    nstart = k + 1;
    nlen = (size_t)(cb - (x->s + nstart));
    end = (size_t)(cb - x->s) + 1;
  }
  const char *name = x->s + nstart;
  if (nlen && name[0] == '^') {
    neg = !neg;
    name++;
    nlen--;
  }
  bool any = nlen == 3 && memcmp(name, "Any", 3) == 0;
  bool cat = !any && IN_LIST(go_categories, name, nlen);
  bool script = !any && !cat && IN_LIST(go_scripts, name, nlen);
  if (!any && !cat && !script) return rx_fail(x, E_CHAR_RANGE, start, end, NULL);
  if ((x->flags & RF_FOLD) && IN_LIST(go_fold_tables, name, nlen))
    return rx_fail(x, "case-insensitive Unicode class not supported", start, end,
                   ": under (?i) Go also matches case variants from outside this class, which PCRE2 "
                   "cannot express; drop (?i) or list the classes, e.g. [\\p{Lu}\\p{Ll}]");
  x->i = end;
  int rc = 0;
  mg_buf_t *b = &c->props;
  if (any) {
    if (!neg) rc = ranges_add(&c->fold, 0, MAX_RUNE);
  } else if (nlen == 1 && name[0] == 'C') {
    /* Go's C is Cc|Cf|Co|Cs; PCRE2's also has Cn (unassigned). */
    rc = mg_buf_append_str(b, neg ? "\\P{C}\\p{Cn}" : "\\p{Cc}\\p{Cf}\\p{Co}\\p{Cs}");
  } else {
    rc = mg_buf_printf(b, "\\%c{%s%.*s}", neg ? 'P' : 'p', script ? "sc:" : "", (int)nlen, name);
  }
  return rc == MG_ETOOBIG ? rx_fail(x, E_LARGE, 0, x->n, NULL) : rc;
}

static int unhex(uint32_t c) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

static bool is_alnum(uint32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Next rune of the pattern (already known to be valid UTF-8), or -1 at the end. */
static int64_t next_rune(rxp_t *x) {
  if (x->i >= x->n) return -1;
  size_t w;
  uint32_t c = utf8_decode((const unsigned char *)x->s + x->i, x->n - x->i, &w);
  x->i += w;
  return c;
}

/* A single-rune escape at x->i (Go's parseEscape). */
static int parse_escape(rxp_t *x, uint32_t *out) {
  size_t start = x->i;
  x->i++;
  int64_t c = next_rune(x);
  if (c < 0) return rx_fail(x, E_BACKSLASH, start, x->n, NULL);
  const char *hint = NULL;
  switch (c) {
  case '1': case '2': case '3': case '4': case '5': case '6': case '7':
    /* One non-zero digit is a backreference: not supported. */
    if (x->i >= x->n || x->s[x->i] < '0' || x->s[x->i] > '7') {
      hint = " (backreferences are not supported: Prometheus regexes are RE2)";
      break;
    }
    __attribute__((fallthrough)); /* octal */
  case '0': {
    uint32_t r = (uint32_t)(c - '0');
    for (int k = 1; k < 3 && x->i < x->n && x->s[x->i] >= '0' && x->s[x->i] <= '7'; k++)
      r = r * 8 + (uint32_t)(x->s[x->i++] - '0');
    *out = r;
    return 0;
  }
  case 'x': {
    int64_t d = next_rune(x);
    if (d < 0) break;
    if (d == '{') {
      uint32_t r = 0;
      int nhex = 0;
      for (;;) {
        int64_t h = next_rune(x);
        if (h < 0) goto invalid;
        if (h == '}') break;
        int v = unhex((uint32_t)h);
        if (v < 0) goto invalid;
        r = r * 16 + (uint32_t)v;
        if (r > MAX_RUNE) goto invalid;
        nhex++;
      }
      if (!nhex) break;
      *out = r;
      return 0;
    }
    int64_t e = next_rune(x);
    int hi = unhex((uint32_t)d), lo = e < 0 ? -1 : unhex((uint32_t)e);
    if (hi < 0 || lo < 0) break;
    *out = (uint32_t)(hi * 16 + lo);
    return 0;
  }
  case 'a': *out = 7; return 0;
  case 'f': *out = 12; return 0;
  case 'n': *out = 10; return 0;
  case 'r': *out = 13; return 0;
  case 't': *out = 9; return 0;
  case 'v': *out = 11; return 0;
  default:
    if (c < 0x80 && !is_alnum((uint32_t)c)) { /* escaped punctuation is itself */
      *out = (uint32_t)c;
      return 0;
    }
    if (c == '8' || c == '9' || c == 'k' || c == 'g') hint = " (backreferences are not supported: Prometheus regexes are RE2)";
    break;
  }
invalid:
  return rx_fail(x, E_ESCAPE, start, x->i, hint);
}

static const cgroup_t *perl_group(char c, bool *neg) {
  for (size_t i = 0; i < sizeof perl_groups / sizeof perl_groups[0]; i++) {
    if (c == perl_groups[i].name[0] || c == (perl_groups[i].name[0] ^ 0x20)) {
      *neg = c >= 'A' && c <= 'Z';
      return &perl_groups[i];
    }
  }
  return NULL;
}

/* [...] at x->i (Go's parseClass). */
static int rx_class(rxp_t *x) {
  size_t start = x->i++;
  cls_t c = {0};
  mg_buf_init(&c.props, RX_MAX_OUT);
  bool negate = false, first = true;
  int rc = 0;
  if (x->i < x->n && x->s[x->i] == '^') {
    negate = true;
    x->i++;
  }
  while (!rc && (x->i >= x->n || x->s[x->i] != ']' || first)) {
    first = false;
    const char *t = x->s + x->i;
    size_t left = x->n - x->i;
    if (left > 2 && t[0] == '[' && t[1] == ':') { /* [:alpha:], [:^alpha:] */
      const char *e = NULL;
      for (size_t k = 2; k + 1 < left; k++)
        if (t[k] == ':' && t[k + 1] == ']') {
          e = t + k;
          break;
        }
      if (e) {
        const char *name = t + 2;
        size_t nlen = (size_t)(e - name);
        bool neg = nlen && name[0] == '^';
        if (neg) name++, nlen--;
        const cgroup_t *g = NULL;
        for (size_t k = 0; k < sizeof posix_groups / sizeof posix_groups[0]; k++)
          if (strlen(posix_groups[k].name) == nlen && memcmp(posix_groups[k].name, name, nlen) == 0) g = &posix_groups[k];
        if (!g) {
          rc = rx_fail(x, E_CHAR_RANGE, x->i, (size_t)(e - x->s) + 2, NULL);
          break;
        }
        x->i = (size_t)(e - x->s) + 2;
        rc = cls_group(x, &c, g, neg);
        continue;
      }
    }
    if (left >= 2 && t[0] == '\\' && (t[1] == 'p' || t[1] == 'P')) {
      rc = cls_unicode(x, &c);
      continue;
    }
    bool neg;
    const cgroup_t *g = left >= 2 && t[0] == '\\' ? perl_group(t[1], &neg) : NULL;
    if (g) {
      x->i += 2;
      rc = cls_group(x, &c, g, neg);
      continue;
    }
    uint32_t lo, hi;
    size_t rstart = x->i;
    if (x->i >= x->n) {
      rc = rx_fail(x, E_BRACKET, start, x->n, NULL);
      break;
    }
    if (t[0] == '\\') {
      if ((rc = parse_escape(x, &lo))) break;
    } else {
      lo = (uint32_t)next_rune(x);
    }
    hi = lo;
    /* [a-] is a or -: a range needs something after the dash. */
    if (x->n - x->i >= 2 && x->s[x->i] == '-' && x->s[x->i + 1] != ']') {
      x->i++;
      if (x->s[x->i] == '\\') {
        if ((rc = parse_escape(x, &hi))) break;
      } else {
        hi = (uint32_t)next_rune(x);
      }
      if (hi < lo) {
        rc = rx_fail(x, E_CHAR_RANGE, rstart, x->i, NULL);
        break;
      }
    }
    rc = ranges_add(&c.fold, lo, hi);
  }
  if (!rc) {
    x->i++; /* ] */
    rc = cls_emit(x, &c, negate);
  }
  cls_cleanup(&c);
  return rc;
}

/* Parses {n}, {n,}, {n,m} at x->s + i like Go's parseRepeat (no leading
 * zeros; a number of 1e8 or more reads as -1). false: not a repeat, and
 * the { is a literal. */
static int parse_int(const char *s, size_t n, size_t *i, int64_t *v) {
  size_t k = *i;
  if (k >= n || s[k] < '0' || s[k] > '9') return 0;
  if (n - k >= 2 && s[k] == '0' && s[k + 1] >= '0' && s[k + 1] <= '9') return 0;
  int64_t r = 0;
  for (; k < n && s[k] >= '0' && s[k] <= '9'; k++) {
    if (r >= 100000000) r = -1;
    if (r >= 0) r = r * 10 + (s[k] - '0');
  }
  *i = k;
  *v = r;
  return 1;
}

static bool parse_repeat(const char *s, size_t n, size_t i, int64_t *min, int64_t *max, size_t *end) {
  if (i >= n || s[i] != '{') return false;
  i++;
  if (!parse_int(s, n, &i, min) || i >= n) return false;
  if (s[i] != ',') {
    *max = *min;
  } else {
    i++;
    if (i >= n) return false;
    if (s[i] == '}') {
      *max = -1;
    } else {
      if (!parse_int(s, n, &i, max)) return false;
      if (*max < 0) *min = -1;
    }
  }
  if (i >= n || s[i] != '}') return false;
  *end = i + 1;
  return true;
}

/* A repetition of the current item; op is "*", "+", "?" or "{n,m}" text.
 * brace: min/max from {}, with max -1 for unbounded. */
static int rx_repeat(rxp_t *x, size_t from, size_t to, const char *op, bool brace, int64_t min, int64_t max) {
  rlevel_t *l = &x->lv[x->depth];
  bool lazy = x->flags & RF_UNGREEDY;
  if (to < x->n && x->s[to] == '?') {
    lazy = !lazy;
    to++;
  }
  if (x->last_repeat) return rx_fail(x, E_REPEAT_OP, from, to, HINT_RE2);
  if (!l->have_atom) return rx_fail(x, E_REPEAT_ARG, from, to, NULL);
  uint32_t need = l->atom_need;
  if (brace) {
    /* Go's repeatIsValid: counts multiply down nested {n,m}; the smallest
     * budget an item fits in is m * max(1, inner), for m the max count (or
     * min when unbounded); {0} frees what it holds. */
    int64_t m = max > 0 ? max : max == 0 ? 0 : min;
    if (max == 0) need = 0;
    else if (m > 0) need = (uint32_t)m * (need > 1 ? need : 1);
    if ((min >= 2 || max >= 2) && need > RX_MAX_REPEAT) return rx_fail(x, E_REPEAT_SIZE, from, to, NULL);
  }
  /* Assertions and quantified items are grouped before quantifying:
   * PCRE2 reads a** or a*+ differently and refuses \b*. */
  int rc = 0;
  if (l->atom_wrap) {
    size_t at = l->atom_at, len = x->out->len;
    if ((rc = mg_buf_append(x->out, "(?:", 3))) return rc == MG_ETOOBIG ? rx_fail(x, E_LARGE, 0, x->n, NULL) : rc;
    memmove(x->out->data + at + 3, x->out->data + at, len - at);
    memcpy(x->out->data + at, "(?:", 3);
    rc = emit(x, ")");
  }
  if (!rc) rc = emit(x, op);
  if (!rc && lazy) rc = emit(x, "?");
  l->atom_need = need;
  l->atom_wrap = true;
  x->i = to;
  return rc;
}

static int rx_open(rxp_t *x, bool capture, const char *name, size_t nlen, int saved_flags) {
  if (x->depth + 1 >= RX_MAX_DEPTH) return rx_fail(x, E_DEPTH, 0, x->n, NULL);
  rlevel_t *l = &x->lv[x->depth];
  if (l->have_atom && l->atom_need > l->max_need) l->max_need = l->atom_need;
  l->have_atom = false;
  if (capture) {
    x->ncap++;
    if (x->ncap >= x->names_cap) {
      size_t ncap = x->names_cap ? x->names_cap * 2 : 8;
      char **nn = mg_reallocarray(x->names, ncap, sizeof *nn);
      if (!nn) return MG_ENOMEM;
      memset(nn + x->names_cap, 0, (ncap - x->names_cap) * sizeof *nn);
      x->names = nn;
      x->names_cap = ncap;
    }
    if (name && !(x->names[x->ncap] = mg_strndup(name, nlen))) return MG_ENOMEM;
  }
  x->depth++;
  x->lv[x->depth] = (rlevel_t){.flags = saved_flags, .open_at = x->out->len};
  return emit(x, capture ? "(" : "(?:");
}

static int rx_close(rxp_t *x) {
  if (x->depth == 0) return rx_fail(x, E_UNEXPECTED, 0, x->n, NULL);
  rlevel_t *l = &x->lv[x->depth];
  uint32_t need = l->max_need;
  if (l->have_atom && l->atom_need > need) need = l->atom_need;
  x->flags = l->flags;
  size_t at = l->open_at;
  x->depth--;
  rlevel_t *p = &x->lv[x->depth];
  p->have_atom = true;
  p->atom_at = at;
  p->atom_wrap = false;
  p->atom_need = need;
  x->i++;
  return emit(x, ")");
}

static bool valid_capture_name(const char *s, size_t n) {
  if (!n) return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] != '_' && !is_alnum((unsigned char)s[i])) return false;
  return true;
}

/* "(?" at x->i: a named group, flags, or a non-capturing group (Go's
 * parsePerlFlags). */
static int rx_perl(rxp_t *x) {
  const char *t = x->s + x->i;
  size_t left = x->n - x->i;
  if ((left > 4 && t[2] == 'P' && t[3] == '<') || (left > 3 && t[2] == '<')) {
    size_t begin = t[2] == '<' ? 3 : 4;
    const char *gt = memchr(t, '>', left);
    bool look = t[2] == '<' && (t[3] == '=' || t[3] == '!');
    const char *hint = look ? HINT_RE2 : NULL;
    if (!gt) return rx_fail(x, E_NAMED, x->i, x->n, hint);
    size_t end = (size_t)(gt - t);
    if (!valid_capture_name(t + begin, end - begin)) return rx_fail(x, E_NAMED, x->i, x->i + end + 1, hint);
    int rc = rx_open(x, true, t + begin, end - begin, x->flags);
    x->i += end + 1;
    return rc;
  }
  int flags = x->flags, sign = 1;
  bool saw = false;
  size_t k = 2;
  while (k < left) {
    char c = t[k++];
    switch (c) {
    case 'i': flags |= RF_FOLD; saw = true; continue;
    case 'm': flags |= RF_MULTI; saw = true; continue;
    case 's': flags |= RF_DOTNL; saw = true; continue;
    case 'U': flags |= RF_UNGREEDY; saw = true; continue;
    case '-':
      if (sign < 0) break;
      /* Go inverts the flags so the cases above clear them. */
      sign = -1;
      flags = ~flags;
      saw = false;
      continue;
    case ':':
    case ')':
      if (sign < 0) {
        if (!saw) break;
        flags = ~flags;
      }
      if (c == ':') {
        int rc = rx_open(x, false, NULL, 0, x->flags);
        if (rc) return rc;
      }
      x->flags = flags;
      x->i += k;
      return 0;
    default:
      break;
    }
    break;
  }
  return rx_fail(x, E_PERL, x->i, x->i + k, HINT_RE2);
}

/* A backslash outside a class. */
static int rx_backslash(rxp_t *x) {
  if (x->i + 1 >= x->n) return rx_fail(x, E_BACKSLASH, x->i, x->n, NULL);
  char c = x->s[x->i + 1];
  const char *assert = c == 'A' ? "\\A" : c == 'b' ? "\\b" : c == 'B' ? "\\B" : c == 'z' ? "\\z" : NULL;
  if (assert) {
    atom_begin(x);
    atom_needs_group(x);
    x->i += 2;
    return emit(x, assert);
  }
  if (c == 'C') return rx_fail(x, E_ESCAPE, x->i, x->i + 2, NULL); /* any byte: Go refuses it */
  if (c == 'Q') { /* \Q...\E: literal text, each rune an item */
    size_t from = x->i + 2, to = from;
    while (to < x->n && !(x->s[to] == '\\' && to + 1 < x->n && x->s[to + 1] == 'E')) to++;
    x->i = from;
    while (x->i < to) {
      int rc = rx_literal(x, (uint32_t)next_rune(x));
      if (rc) return rc;
    }
    x->i = to < x->n ? to + 2 : to;
    return 0;
  }
  cls_t cl = {0};
  mg_buf_init(&cl.props, RX_MAX_OUT);
  bool neg = false;
  const cgroup_t *g = (c == 'p' || c == 'P') ? NULL : perl_group(c, &neg);
  int rc;
  if (c == 'p' || c == 'P') {
    rc = cls_unicode(x, &cl);
  } else if (g) {
    x->i += 2;
    rc = cls_group(x, &cl, g, neg);
  } else {
    uint32_t r;
    mg_buf_cleanup(&cl.props);
    rc = parse_escape(x, &r);
    return rc ? rc : rx_literal(x, r);
  }
  if (!rc) rc = cls_emit(x, &cl, false);
  cls_cleanup(&cl);
  return rc;
}

static int rx_parse(rxp_t *x) {
  while (x->i < x->n) {
    bool repeat = false;
    int rc = 0;
    size_t from = x->i;
    char c = x->s[x->i];
    switch (c) {
    case '(':
      if (x->i + 1 < x->n && x->s[x->i + 1] == '?') {
        rc = rx_perl(x);
      } else {
        x->i++;
        rc = rx_open(x, true, NULL, 0, x->flags);
      }
      break;
    case '|': {
      rlevel_t *l = &x->lv[x->depth];
      if (l->have_atom && l->atom_need > l->max_need) l->max_need = l->atom_need;
      l->have_atom = false;
      if (x->depth == 0) x->top_alt = true;
      x->i++;
      rc = emit(x, "|");
      break;
    }
    case ')':
      rc = rx_close(x);
      break;
    case '^':
      atom_begin(x);
      atom_needs_group(x);
      x->i++;
      rc = emit(x, x->flags & RF_MULTI ? "(?m:^)" : "\\A");
      break;
    case '$':
      atom_begin(x);
      atom_needs_group(x);
      if (x->i == x->n - 1) x->end_multi = x->flags & RF_MULTI;
      x->i++;
      rc = emit(x, x->flags & RF_MULTI ? "(?m:$)" : "\\z");
      break;
    case '.':
      atom_begin(x);
      x->i++;
      rc = emit(x, x->flags & RF_DOTNL ? "[\\x{0}-\\x{10ffff}]" : "[^\\x{a}]");
      break;
    case '[':
      rc = rx_class(x);
      break;
    case '*':
    case '+':
    case '?': {
      char op[2] = {c, 0};
      rc = rx_repeat(x, from, from + 1, op, false, 0, 0);
      repeat = true;
      break;
    }
    case '{': {
      int64_t min, max;
      size_t end;
      if (!parse_repeat(x->s, x->n, x->i, &min, &max, &end)) {
        x->i++;
        rc = rx_literal(x, '{');
        break;
      }
      if (min < 0 || min > RX_MAX_REPEAT || max > RX_MAX_REPEAT || (max >= 0 && min > max)) {
        rc = rx_fail(x, E_REPEAT_SIZE, from, end, NULL);
        break;
      }
      char op[32];
      if (max == min) snprintf(op, sizeof op, "{%d}", (int)min);
      else if (max < 0) snprintf(op, sizeof op, "{%d,}", (int)min);
      else snprintf(op, sizeof op, "{%d,%d}", (int)min, (int)max);
      rc = rx_repeat(x, from, end, op, true, min, max);
      repeat = true;
      break;
    }
    case '\\':
      rc = rx_backslash(x);
      break;
    default:
      rc = rx_literal(x, (uint32_t)next_rune(x));
      break;
    }
    if (rc) return rc;
    x->last_repeat = repeat;
  }
  if (x->depth) return rx_fail(x, E_PAREN, 0, x->n, NULL);
  return 0;
}

/* The translated regex as applied. */
typedef struct rx {
  pcre2_code *code; /* NULL when the action does not use the regex */
  uint32_t ncap;
  char **names; /* [ncap + 1]; names[i] of group i, or NULL */
  bool whole;   /* each match spans the whole subject */
  bool jit;
} rx_t;

static void rx_cleanup(rx_t *r) {
  pcre2_code_free(r->code);
  if (r->names)
    for (uint32_t i = 0; i <= r->ncap; i++) mg_free(r->names[i]);
  mg_free(r->names);
  memset(r, 0, sizeof *r);
}

/* ---- Compile -------------------------------------------------------------- */

typedef struct cctx {
  char *err;
  size_t errlen;
  pcre2_general_context *gctx;
  pcre2_compile_context *ccx;
  pcre2_code *letter; /* [\p{L}\p{Nd}], for $name in templates */
  pcre2_match_data *lmd;
  mg_buf_t out;
} cctx_t;

static void *pcre_alloc(PCRE2_SIZE n, void *ud) {
  (void)ud;
  return mg_malloc(n);
}

static void pcre_dealloc(void *p, void *ud) {
  (void)ud;
  mg_free(p);
}

/* Translate (and, when compile is set, PCRE2-compile and JIT) one regex. */
static int rx_build(cctx_t *cc, const char *regex, bool compile, rx_t *r, char *err, size_t errlen) {
  size_t ulen = strlen(regex);
  if (ulen > RX_MAX_REGEX) {
    snprintf(err, errlen, "longer than %d bytes", RX_MAX_REGEX);
    return MG_ECONFIG;
  }
  if (!utf8_valid(regex, ulen)) {
    snprintf(err, errlen, "%s", E_UTF8);
    return MG_ECONFIG;
  }
  mg_buf_t wrapped;
  mg_buf_init(&wrapped, 0);
  mg_buf_reset(&cc->out);
  rxp_t x = {.out = &cc->out, .err = err, .errlen = errlen};
  int rc = mg_buf_printf(&wrapped, "^(?s:%s)$", regex);
  if (!rc && !(x.lv = mg_calloc(RX_MAX_DEPTH, sizeof *x.lv))) rc = MG_ENOMEM;
  if (!rc) {
    x.s = wrapped.data;
    x.n = wrapped.len;
    rc = rx_parse(&x);
  }
  mg_free(x.lv);
  mg_buf_cleanup(&wrapped);
  r->ncap = x.ncap;
  r->whole = !x.top_alt && !x.end_multi;
  if (!rc) {
    r->names = mg_calloc(x.ncap + 1, sizeof *r->names);
    if (!r->names) rc = MG_ENOMEM;
    for (uint32_t i = 1; !rc && i <= x.ncap && i < x.names_cap; i++) r->names[i] = x.names[i], x.names[i] = NULL;
  }
  for (size_t i = 0; i < x.names_cap; i++) mg_free(x.names[i]);
  mg_free(x.names);
  if (rc || !compile) return rc;
  int ec;
  PCRE2_SIZE eo;
  r->code = pcre2_compile((PCRE2_SPTR)cc->out.data, cc->out.len,
                          PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_ALT_CIRCUMFLEX | PCRE2_NEVER_BACKSLASH_C, &ec, &eo,
                          cc->ccx);
  if (!r->code) {
    if (ec == PCRE2_ERROR_NOMEMORY || ec == PCRE2_ERROR_HEAP_FAILED) return MG_ENOMEM;
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(ec, msg, sizeof msg);
    snprintf(err, errlen, "PCRE2 cannot compile it (%s)%s", (const char *)msg,
             ec == PCRE2_ERROR_UNKNOWN_UNICODE_PROPERTY ? "; this PCRE2 does not know that script" : "");
    return MG_ECONFIG;
  }
  /* Without JIT (not built in, or refused by the OS) pcre2_match runs it. */
  r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
  return 0;
}

/* unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_', as Go's Expand
 * reads names; 1 yes, 0 no, MG_ENOMEM. */
static int name_rune(cctx_t *cc, uint32_t r) {
  if (r < 0x80) return is_alnum(r) || r == '_';
  if (!cc->letter) {
    int ec;
    PCRE2_SIZE eo;
    static const char pat[] = "\\A[\\p{L}\\p{Nd}]\\z";
    cc->letter = pcre2_compile((PCRE2_SPTR)pat, sizeof pat - 1, PCRE2_UTF, &ec, &eo, cc->ccx);
    if (cc->letter) cc->lmd = pcre2_match_data_create(1, cc->gctx);
    if (!cc->letter || !cc->lmd) return MG_ENOMEM;
  }
  char b[4];
  size_t n = utf8_encode(r, b);
  return pcre2_match(cc->letter, (PCRE2_SPTR)b, n, 0, 0, cc->lmd, NULL) > 0;
}

/* A replacement or target_label template, parsed once as Go's
 * Regexp.Expand reads it: $name or ${name}, name the longest run of
 * letters, digits and _; a number (no leading zero, < 1e8) is a group
 * index, anything else a group name; $$ is $; a $ that starts no valid
 * reference is literal text; unknown or unmatched groups expand to "". */
enum { T_LIT, T_NUM, T_NAME };

typedef struct tpl_op {
  uint8_t kind;
  uint32_t a, b; /* T_LIT: text[a..a+b); T_NUM: group a; T_NAME: groups[a..a+b) */
} tpl_op_t;

typedef struct tpl {
  char *text;
  size_t len;
  bool literal; /* no '$': expands to text itself (one T_LIT op, or none) */
  tpl_op_t *ops;
  size_t nops, opcap;
  uint32_t *groups; /* T_NAME candidates: groups with that name, in order */
  size_t ngroups;
} tpl_t;

static void tpl_cleanup(tpl_t *t) {
  mg_free(t->text);
  mg_free(t->ops);
  mg_free(t->groups);
  memset(t, 0, sizeof *t);
}

static int tpl_op(tpl_t *t, uint8_t kind, size_t a, size_t b) {
  if (t->nops == t->opcap) {
    size_t ncap = t->opcap ? t->opcap * 2 : 8;
    tpl_op_t *o = mg_reallocarray(t->ops, ncap, sizeof *o);
    if (!o) return MG_ENOMEM;
    t->ops = o;
    t->opcap = ncap;
  }
  t->ops[t->nops++] = (tpl_op_t){kind, (uint32_t)a, (uint32_t)b};
  return 0;
}

static int tpl_compile(cctx_t *cc, tpl_t *t, const char *text, const rx_t *rx) {
  size_t len = strlen(text), i = 0;
  if (!(t->text = mg_strndup(text, len))) return MG_ENOMEM;
  t->len = len;
  t->literal = !memchr(text, '$', len);
  int rc = 0;
  while (!rc && i < len) {
    const char *d = memchr(text + i, '$', len - i);
    size_t j = d ? (size_t)(d - text) : len;
    if (j > i && (rc = tpl_op(t, T_LIT, i, j - i))) break;
    if (!d) break;
    i = j + 1;
    if (i < len && text[i] == '$') {
      rc = tpl_op(t, T_LIT, i, 1);
      i++;
      continue;
    }
    bool brace = i < len && text[i] == '{';
    size_t k = i + brace, ns = k, w;
    while (k < len) {
      int nr = name_rune(cc, utf8_decode((const unsigned char *)text + k, len - k, &w));
      if (nr < 0) return nr;
      if (!nr) break;
      k += w;
    }
    size_t ne = k;
    if (k == ns || (brace && (k >= len || text[k] != '}'))) { /* malformed: the $ is text */
      rc = tpl_op(t, T_LIT, j, 1);
      continue;
    }
    k += brace;
    int64_t num = 0;
    for (size_t q = ns; q < ne; q++) {
      if (text[q] < '0' || text[q] > '9' || num >= 100000000) {
        num = -1;
        break;
      }
      num = num * 10 + (text[q] - '0');
    }
    if (text[ns] == '0' && ne - ns > 1) num = -1;
    if (num >= 0) {
      rc = tpl_op(t, T_NUM, (size_t)num, 0);
    } else {
      size_t first = t->ngroups;
      for (uint32_t g = 1; !rc && g <= rx->ncap; g++) {
        const char *gn = rx->names[g];
        if (!gn || strlen(gn) != ne - ns || memcmp(gn, text + ns, ne - ns) != 0) continue;
        uint32_t *ng = mg_reallocarray(t->groups, t->ngroups + 1, sizeof *ng);
        if (!ng) return MG_ENOMEM;
        t->groups = ng;
        t->groups[t->ngroups++] = g;
      }
      if (!rc) rc = tpl_op(t, T_NAME, first, t->ngroups - first);
    }
    i = k;
  }
  return rc;
}

#define NOPOS SIZE_MAX

/* Expands t with the match caps (byte offsets into src, NOPOS for unset
 * groups); with out == NULL only measures. */
static size_t tpl_expand(const tpl_t *t, const rx_t *rx, const char *src, const size_t *caps, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < t->nops; i++) {
    const tpl_op_t *op = &t->ops[i];
    const char *p = NULL;
    size_t n = 0;
    uint32_t g = UINT32_MAX;
    switch (op->kind) {
    case T_LIT:
      p = t->text + op->a;
      n = op->b;
      break;
    case T_NUM:
      if (op->a <= rx->ncap && caps[2 * op->a] != NOPOS) g = op->a;
      break;
    case T_NAME:
      for (uint32_t k = 0; k < op->b && g == UINT32_MAX; k++)
        if (caps[2 * t->groups[op->a + k]] != NOPOS) g = t->groups[op->a + k];
      break;
    }
    if (g != UINT32_MAX) {
      p = src + caps[2 * g];
      n = caps[2 * g + 1] - caps[2 * g];
    }
    if (out && n) memcpy(out + o, p, n);
    o += n;
  }
  return o;
}

/* Prometheus's check for label names with $ references (legacy scheme):
 * ^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$, i.e. a letter, _ or
 * reference first, then any of \w or references. */
static bool valid_name_template(const char *s) {
  bool first = true;
  if (!*s) return false;
  while (*s) {
    unsigned char c = (unsigned char)*s;
    bool word = is_alnum(c) || c == '_';
    if (c == '$') {
      s++;
      size_t k = *s == '{';
      size_t from = k;
      while (is_alnum((unsigned char)s[k]) || s[k] == '_') k++;
      if (k == from) return false;
      if (from) {
        if (s[k] != '}') return false;
        k++;
      }
      s += k;
    } else if (word && (!first || !(c >= '0' && c <= '9'))) {
      s++;
    } else {
      return false;
    }
    first = false;
  }
  return true;
}

typedef enum {
  A_REPLACE,
  A_KEEP,
  A_DROP,
  A_KEEPEQUAL,
  A_DROPEQUAL,
  A_HASHMOD,
  A_LABELMAP,
  A_LABELDROP,
  A_LABELKEEP,
  A_LOWERCASE,
  A_UPPERCASE,
} action_t;

static const char *const action_names[] = {
    [A_REPLACE] = "replace",     [A_KEEP] = "keep",           [A_DROP] = "drop",
    [A_KEEPEQUAL] = "keepequal", [A_DROPEQUAL] = "dropequal", [A_HASHMOD] = "hashmod",
    [A_LABELMAP] = "labelmap",   [A_LABELDROP] = "labeldrop", [A_LABELKEEP] = "labelkeep",
    [A_LOWERCASE] = "lowercase", [A_UPPERCASE] = "uppercase",
};

typedef struct rule {
  action_t action;
  mg_str_t *src; /* source label names, copied */
  size_t nsrc;
  char *sep;
  size_t seplen;
  rx_t rx;
  uint64_t modulus;
  tpl_t target; /* target_label (a template for replace) */
  tpl_t repl;   /* replacement */
} rule_t;

struct mg_relabel {
  rule_t *rules;
  size_t n;
  uint32_t max_pairs; /* match data size: max capture groups + 1 */
};

static void rule_cleanup(rule_t *ru) {
  for (size_t i = 0; i < ru->nsrc; i++) mg_free((char *)ru->src[i].p);
  mg_free(ru->src);
  mg_free(ru->sep);
  rx_cleanup(&ru->rx);
  tpl_cleanup(&ru->target);
  tpl_cleanup(&ru->repl);
}

void mg_relabel_free(mg_relabel_t *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++) rule_cleanup(&r->rules[i]);
  mg_free(r->rules);
  mg_free(r);
}

static bool valid_label(const char *s) { return mg_parse_valid_label_name(mg_str(s)); }

/* Writes "rule N (action) at line L: " + message to err. */
static int rule_fail(cctx_t *cc, size_t idx, const char *action, uint32_t line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int rule_fail(cctx_t *cc, size_t idx, const char *action, uint32_t line, const char *fmt, ...) {
  if (!cc->err || !cc->errlen) return MG_ECONFIG;
  char where[64] = "";
  if (line) snprintf(where, sizeof where, " at line %u", line);
  char msg[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char act[48] = "";
  msg_quote(act, sizeof act, action, strlen(action) > 32 ? 32 : strlen(action));
  snprintf(cc->err, cc->errlen, "rule %zu (%s)%s: %s", idx + 1, act, where, msg);
  return MG_ECONFIG;
}

/* Quotes a config value for a message (bounded, one line). */
static const char *q(char *buf, size_t cap, const char *s) {
  buf[0] = '"';
  buf[1] = 0;
  size_t n = strlen(s);
  msg_quote(buf, cap - 5, s, n > 64 ? 64 : n);
  strcat(buf, n > 64 ? "...\"" : "\"");
  return buf;
}

static int rule_compile(cctx_t *cc, const mg_conf_relabel_t *c, size_t idx, rule_t *ru) {
  char qb[160], rxerr[512];
  const char *act = c->action ? c->action : "replace";
  /* Go lower-cases the action with strings.ToLower. */
  char low[32];
  size_t alen = strlen(act);
  bool known = false;
  if (map_case(act, alen, false, NULL) < sizeof low) {
    low[map_case(act, alen, false, low)] = 0;
    for (size_t a = 0; a < sizeof action_names / sizeof action_names[0]; a++)
      if (strcmp(low, action_names[a]) == 0) {
        ru->action = (action_t)a;
        known = true;
      }
  }
  if (!known)
    return rule_fail(cc, idx, act, c->line, "action: unknown relabel action %s (want one of replace, keep, drop, "
                     "keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep, lowercase, uppercase)",
                     q(qb, sizeof qb, act));
  const char *an = action_names[ru->action];
  action_t a = ru->action;

  if (c->nsource_labels && !(ru->src = mg_calloc(c->nsource_labels, sizeof *ru->src))) return MG_ENOMEM;
  for (size_t i = 0; i < c->nsource_labels; i++) {
    const char *s = c->source_labels[i] ? c->source_labels[i] : "";
    if (!valid_label(s))
      return rule_fail(cc, idx, an, c->line, "source_labels: %s is not a valid label name", q(qb, sizeof qb, s));
    char *d = mg_strdup(s);
    if (!d) return MG_ENOMEM;
    ru->src[ru->nsrc++] = mg_str(d);
  }
  const char *sep = c->separator ? c->separator : ";";
  if (!(ru->sep = mg_strdup(sep))) return MG_ENOMEM;
  ru->seplen = strlen(sep);

  bool uses_rx = a == A_REPLACE || a == A_KEEP || a == A_DROP || a == A_LABELMAP || a == A_LABELDROP ||
                 a == A_LABELKEEP;
  rxerr[0] = 0;
  int rc = rx_build(cc, c->regex ? c->regex : "(.*)", uses_rx, &ru->rx, rxerr, sizeof rxerr);
  if (rc == MG_ECONFIG) return rule_fail(cc, idx, an, c->line, "regex: %s", rxerr);
  if (rc) return rc;

  /* The checks of Prometheus's relabel.Config.Validate, in its order. */
  const char *target = c->target_label ? c->target_label : "";
  const char *repl = c->replacement ? c->replacement : "$1";
  bool needs_target = a == A_REPLACE || a == A_HASHMOD || a == A_LOWERCASE || a == A_UPPERCASE ||
                      a == A_KEEPEQUAL || a == A_DROPEQUAL;
  bool plain_target = a == A_LOWERCASE || a == A_UPPERCASE || a == A_KEEPEQUAL || a == A_DROPEQUAL;
  if (a == A_HASHMOD && c->modulus == 0)
    return rule_fail(cc, idx, an, c->line, "modulus: must be set and non-zero for hashmod");
  if (needs_target && !*target)
    return rule_fail(cc, idx, an, c->line, "target_label: must be set for %s", an);
  if (a == A_REPLACE && !strchr(target, '$') && !valid_label(target))
    return rule_fail(cc, idx, an, c->line, "target_label: %s is not a valid label name", q(qb, sizeof qb, target));
  if (a == A_REPLACE && strchr(target, '$') && !valid_name_template(target))
    return rule_fail(cc, idx, an, c->line,
                     "target_label: %s is not a valid label name (letters, digits, _ and $1, ${1}, $name "
                     "references; not starting with a digit)",
                     q(qb, sizeof qb, target));
  if (plain_target && !valid_label(target))
    return rule_fail(cc, idx, an, c->line, "target_label: %s is not a valid label name", q(qb, sizeof qb, target));
  if (plain_target && strcmp(repl, "$1") != 0)
    return rule_fail(cc, idx, an, c->line, "replacement: cannot be set for %s", an);
  if (a == A_LABELMAP && !valid_name_template(repl))
    return rule_fail(cc, idx, an, c->line,
                     "replacement: %s is not a valid label name (letters, digits, _ and $1, ${1}, $name "
                     "references; not starting with a digit)",
                     q(qb, sizeof qb, repl));
  if (a == A_HASHMOD && !valid_label(target))
    return rule_fail(cc, idx, an, c->line, "target_label: %s is not a valid label name", q(qb, sizeof qb, target));
  if (a == A_KEEPEQUAL || a == A_DROPEQUAL) {
    const char *extra = c->regex ? "regex" : c->modulus ? "modulus" : strcmp(sep, ";") ? "separator" : NULL;
    if (extra)
      return rule_fail(cc, idx, an, c->line, "only source_labels and target_label may be set (%s is set)", extra);
  }
  if (a == A_LABELDROP || a == A_LABELKEEP) {
    const char *extra = c->nsource_labels ? "source_labels"
                        : *target         ? "target_label"
                        : c->modulus      ? "modulus"
                        : strcmp(sep, ";") ? "separator"
                        : strcmp(repl, "$1") ? "replacement"
                                             : NULL;
    if (extra) return rule_fail(cc, idx, an, c->line, "only regex may be set (%s is set)", extra);
  }
  ru->modulus = c->modulus;
  rc = tpl_compile(cc, &ru->target, target, &ru->rx);
  if (!rc) rc = tpl_compile(cc, &ru->repl, repl, &ru->rx);
  return rc;
}

int mg_relabel_compile(const mg_conf_relabels_t *rules, mg_relabel_t **out, char *err, size_t errlen) {
  char dummy[1];
  if (!err || !errlen) {
    err = dummy;
    errlen = sizeof dummy;
  }
  err[0] = 0;
  *out = NULL;
  mg_relabel_t *r = mg_calloc(1, sizeof *r);
  cctx_t cc = {.err = err, .errlen = errlen};
  mg_buf_init(&cc.out, RX_MAX_OUT);
  int rc = r ? 0 : MG_ENOMEM;
  size_t n = rules ? rules->n : 0;
  if (!rc && n && !(r->rules = mg_calloc(n, sizeof *r->rules))) rc = MG_ENOMEM;
  if (!rc && !(cc.gctx = pcre2_general_context_create(pcre_alloc, pcre_dealloc, NULL))) rc = MG_ENOMEM;
  if (!rc && !(cc.ccx = pcre2_compile_context_create(cc.gctx))) rc = MG_ENOMEM;
  if (!rc) {
    pcre2_set_newline(cc.ccx, PCRE2_NEWLINE_LF);
    /* Above PCRE2's default of 250: RE2 allows 1000 levels, and a
     * quantified quantifier gains a group. */
    pcre2_set_parens_nest_limit(cc.ccx, 2 * RX_MAX_DEPTH + 16);
  }
  if (r) r->max_pairs = 1;
  for (size_t i = 0; !rc && i < n; i++) {
    rc = rule_compile(&cc, rules->v[i], i, &r->rules[i]);
    r->n = i + 1;
    if (!rc && r->rules[i].rx.ncap + 1 > r->max_pairs) r->max_pairs = r->rules[i].rx.ncap + 1;
  }
  if (rc == MG_ENOMEM) snprintf(err, errlen, "out of memory");
  pcre2_match_data_free(cc.lmd);
  pcre2_code_free(cc.letter);
  pcre2_compile_context_free(cc.ccx);
  pcre2_general_context_free(cc.gctx);
  mg_buf_cleanup(&cc.out);
  if (rc) {
    mg_relabel_free(r);
    return rc;
  }
  *out = r;
  return 0;
}

/* ---- Label builder ---------------------------------------------------------- */

typedef struct blk {
  struct blk *next;
  size_t cap, used;
  char data[];
} blk_t;

typedef struct scratch {
  char *p;
  size_t cap;
} scratch_t;

typedef struct snap {
  mg_label_t l;
  uint64_t seq;
} snap_t;

struct mg_labels_priv {
  size_t cap;    /* of ls->v and seq */
  uint64_t *seq; /* when each label was set: labelmap's visiting order */
  uint64_t seq_next, seq_base;
  size_t max_labels, max_bytes;
  blk_t *blocks, *cur; /* arena for strings made between resets */
  size_t used;
  scratch_t join, tgt, tx, lm;
  uint32_t *omap; /* transcoded subject offset -> original offset */
  size_t omap_cap;
  snap_t *snap;
  size_t snap_cap;
  pcre2_general_context *gctx;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jstack;
  pcre2_match_data *md;
  uint32_t md_pairs;
  size_t *caps; /* the last match, original byte offsets, NOPOS if unset */
};

#define ARENA_MIN_BLOCK 4096
#define ARENA_MAX_BLOCK (1u << 20)
#define JIT_STACK_MAX (8u << 20) /* deep backtracking on long values */

static char *arena_alloc(mg_labels_priv_t *p, size_t n, int *rc) {
  if (n > p->max_bytes - p->used) {
    *rc = MG_ETOOBIG;
    return NULL;
  }
  blk_t *b = p->cur;
  while (b && b->cap - b->used < n) b = b->next;
  if (!b) {
    blk_t **tail = &p->blocks;
    size_t last = 0;
    while (*tail) {
      last = (*tail)->cap;
      tail = &(*tail)->next;
    }
    size_t cap = last ? (last < ARENA_MAX_BLOCK ? last * 2 : ARENA_MAX_BLOCK) : ARENA_MIN_BLOCK;
    if (cap < n) cap = n;
    if (!(b = mg_malloc(sizeof *b + cap))) {
      *rc = MG_ENOMEM;
      return NULL;
    }
    *b = (blk_t){.cap = cap};
    *tail = b;
  }
  p->cur = b;
  char *r = b->data + b->used;
  b->used += n;
  p->used += n;
  return r;
}

/* Also allocates for n == 0, so views into scratch are never NULL. */
static int scratch_reserve(const mg_labels_priv_t *p, scratch_t *s, size_t n) {
  if (n <= s->cap && s->p) return 0;
  if (n > p->max_bytes) return MG_ETOOBIG;
  size_t cap = s->cap * 2 > n ? s->cap * 2 : n < 256 ? 256 : n;
  char *q = mg_realloc(s->p, cap);
  if (!q) return MG_ENOMEM;
  s->p = q;
  s->cap = cap;
  return 0;
}

int mg_labels_init(mg_labels_t *ls, size_t max_labels, size_t max_bytes) {
  memset(ls, 0, sizeof *ls);
  mg_labels_priv_t *p = mg_calloc(1, sizeof *p);
  if (!p) return MG_ENOMEM;
  p->max_labels = max_labels ? max_labels : MG_LABELS_DEFAULT_MAX_LABELS;
  p->max_bytes = max_bytes ? max_bytes : MG_LABELS_DEFAULT_MAX_BYTES;
  if (p->max_bytes > (1u << 30)) p->max_bytes = 1u << 30; /* offsets fit omap's uint32 */
  if (!(p->gctx = pcre2_general_context_create(pcre_alloc, pcre_dealloc, NULL))) {
    mg_free(p);
    return MG_ENOMEM;
  }
  ls->priv = p;
  return 0;
}

void mg_labels_cleanup(mg_labels_t *ls) {
  mg_labels_priv_t *p = ls->priv;
  if (p) {
    for (blk_t *b = p->blocks, *nx; b; b = nx) {
      nx = b->next;
      mg_free(b);
    }
    mg_free(p->seq);
    mg_free(p->join.p);
    mg_free(p->tgt.p);
    mg_free(p->tx.p);
    mg_free(p->lm.p);
    mg_free(p->omap);
    mg_free(p->snap);
    mg_free(p->caps);
    pcre2_match_data_free(p->md);
    pcre2_jit_stack_free(p->jstack);
    pcre2_match_context_free(p->mctx);
    pcre2_general_context_free(p->gctx);
    mg_free(p);
  }
  mg_free(ls->v);
  memset(ls, 0, sizeof *ls);
}

void mg_labels_reset(mg_labels_t *ls) {
  mg_labels_priv_t *p = ls->priv;
  ls->n = 0;
  for (blk_t *b = p->blocks; b; b = b->next) b->used = 0;
  p->cur = p->blocks;
  p->used = 0;
  p->seq_next = p->seq_base = 0;
}

static size_t lfind(const mg_labels_t *ls, mg_str_t name, bool *found) {
  size_t a = 0, b = ls->n;
  while (a < b) {
    size_t m = a + (b - a) / 2;
    int c = mg_str_cmp(ls->v[m].name, name);
    if (c < 0) {
      a = m + 1;
    } else if (c > 0) {
      b = m;
    } else {
      *found = true;
      return m;
    }
  }
  *found = false;
  return a;
}

void mg_labels_del(mg_labels_t *ls, mg_str_t name) {
  bool found;
  size_t i = lfind(ls, name, &found);
  if (!found) return;
  memmove(ls->v + i, ls->v + i + 1, (ls->n - i - 1) * sizeof *ls->v);
  memmove(ls->priv->seq + i, ls->priv->seq + i + 1, (ls->n - i - 1) * sizeof *ls->priv->seq);
  ls->n--;
}

mg_str_t mg_labels_get(const mg_labels_t *ls, mg_str_t name) {
  bool found;
  size_t i = lfind(ls, name, &found);
  return found ? ls->v[i].value : (mg_str_t){"", 0};
}

/* Prometheus's Builder.Set: "" deletes; setting a label that was there
 * when the rules started moves it to the end of labelmap's order. The
 * name is copied into the arena if it is new and copy_name is set. */
static int lset(mg_labels_t *ls, mg_str_t name, mg_str_t value, bool copy_name) {
  mg_labels_priv_t *p = ls->priv;
  if (value.n == 0) {
    mg_labels_del(ls, name);
    return 0;
  }
  bool found;
  size_t i = lfind(ls, name, &found);
  if (found) {
    ls->v[i].value = value;
    if (p->seq[i] <= p->seq_base) p->seq[i] = ++p->seq_next;
    return 0;
  }
  if (ls->n >= p->max_labels) return MG_ETOOBIG;
  if (ls->n == p->cap) {
    size_t ncap = p->cap ? p->cap * 2 : 16;
    mg_label_t *v = mg_reallocarray(ls->v, ncap, sizeof *v);
    if (!v) return MG_ENOMEM;
    ls->v = v;
    uint64_t *s = mg_reallocarray(p->seq, ncap, sizeof *s);
    if (!s) return MG_ENOMEM;
    p->seq = s;
    p->cap = ncap;
  }
  if (copy_name) {
    int rc = 0;
    char *d = name.n ? arena_alloc(p, name.n, &rc) : (char *)"";
    if (!d) return rc;
    if (name.n) memcpy(d, name.p, name.n);
    name.p = d;
  }
  memmove(ls->v + i + 1, ls->v + i, (ls->n - i) * sizeof *ls->v);
  memmove(p->seq + i + 1, p->seq + i, (ls->n - i) * sizeof *p->seq);
  ls->v[i] = (mg_label_t){name, value};
  p->seq[i] = ++p->seq_next;
  ls->n++;
  return 0;
}

int mg_labels_set(mg_labels_t *ls, mg_str_t name, mg_str_t value) { return lset(ls, name, value, false); }

int mg_labels_set_copy(mg_labels_t *ls, mg_str_t name, mg_str_t value) {
  if (value.n == 0) {
    mg_labels_del(ls, name);
    return 0;
  }
  int rc = 0;
  char *d = arena_alloc(ls->priv, value.n, &rc);
  if (!d) return rc;
  memcpy(d, value.p, value.n);
  return lset(ls, name, mg_str_n(d, value.n), true);
}

/* ---- Matching --------------------------------------------------------------- */

/* What PCRE2 sees of a subject: the bytes themselves when they are valid
 * UTF-8; otherwise a copy in which each invalid byte is U+FFFD, as Go's
 * regexp reads it, with a map back to the original offsets. */
typedef struct subj {
  const char *s;
  size_t n;
  const char *m;
  size_t mn;
  const uint32_t *omap;
} subj_t;

static int subj_prepare(mg_labels_priv_t *p, subj_t *sj, const char *s, size_t n) {
  if (!n) s = "";
  *sj = (subj_t){s, n, s, n, NULL};
  if (utf8_valid(s, n)) return 0;
  const unsigned char *u = (const unsigned char *)s;
  size_t out = 0, w;
  for (size_t i = 0; i < n; i += w) out += utf8_invalid_at(u + i, n - i, &w) ? 3 : w;
  int rc = scratch_reserve(p, &p->tx, out);
  if (rc) return rc;
  if (out + 1 > p->omap_cap) {
    uint32_t *m = mg_reallocarray(p->omap, out + 1, sizeof *m);
    if (!m) return MG_ENOMEM;
    p->omap = m;
    p->omap_cap = out + 1;
  }
  size_t o = 0;
  for (size_t i = 0; i < n; i += w) {
    size_t k = utf8_invalid_at(u + i, n - i, &w) ? utf8_encode(RUNE_ERROR, p->tx.p + o) : w;
    if (k == w) memcpy(p->tx.p + o, s + i, w);
    for (size_t j = 0; j < k; j++) p->omap[o + j] = (uint32_t)i;
    o += k;
  }
  p->omap[out] = (uint32_t)n;
  sj->m = p->tx.p;
  sj->mn = out;
  sj->omap = p->omap;
  return 0;
}

static int md_ensure(mg_labels_priv_t *p, uint32_t pairs) {
  if (!p->mctx) {
    if (!(p->mctx = pcre2_match_context_create(p->gctx))) return MG_ENOMEM;
    /* NULL without JIT support; JIT then keeps its 32 KiB machine stack. */
    p->jstack = pcre2_jit_stack_create(64 * 1024, JIT_STACK_MAX, p->gctx);
    if (p->jstack) pcre2_jit_stack_assign(p->mctx, NULL, p->jstack);
  }
  if (p->md_pairs >= pairs) return 0;
  pcre2_match_data *md = pcre2_match_data_create(pairs, p->gctx);
  size_t *caps = mg_reallocarray(p->caps, 2 * (size_t)pairs, sizeof *caps);
  if (caps) p->caps = caps;
  if (!md || !caps) {
    pcre2_match_data_free(md);
    return MG_ENOMEM;
  }
  pcre2_match_data_free(p->md);
  p->md = md;
  p->md_pairs = pairs;
  return 0;
}

/* Searches from original offset `from` (leftmost-first, like Go). 1 with
 * p->caps set, 0 no match, or MG_ETOOBIG/MG_ENOMEM. */
static int rx_exec(mg_labels_priv_t *p, const rx_t *rx, const subj_t *sj, size_t from) {
  size_t start = from;
  if (sj->omap) { /* first transcoded offset of the rune at `from` */
    size_t a = 0, b = sj->mn;
    while (a < b) {
      size_t m = a + (b - a) / 2;
      if (sj->omap[m] < from) a = m + 1;
      else b = m;
    }
    start = a;
  }
  int rc = rx->jit ? pcre2_jit_match(rx->code, (PCRE2_SPTR)sj->m, sj->mn, start, 0, p->md, p->mctx)
                   : pcre2_match(rx->code, (PCRE2_SPTR)sj->m, sj->mn, start, PCRE2_NO_UTF_CHECK, p->md, p->mctx);
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc == PCRE2_ERROR_NOMEMORY) return MG_ENOMEM;
  if (rc < 0) return MG_ETOOBIG; /* match, depth, heap or JIT stack limit */
  const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
  for (uint32_t k = 0; k < 2 * (rx->ncap + 1); k++)
    p->caps[k] = ov[k] == PCRE2_UNSET ? NOPOS : sj->omap ? sj->omap[ov[k]] : ov[k];
  return 1;
}

/* ---- Apply ------------------------------------------------------------------- */

/* Source values joined by the separator; absent labels count as "". */
static int join_sources(mg_labels_t *ls, const rule_t *ru, mg_str_t *val) {
  if (ru->nsrc <= 1) {
    *val = ru->nsrc ? mg_labels_get(ls, ru->src[0]) : (mg_str_t){"", 0};
    return 0;
  }
  mg_labels_priv_t *p = ls->priv;
  size_t total = ru->seplen * (ru->nsrc - 1);
  for (size_t i = 0; i < ru->nsrc; i++) {
    total += mg_labels_get(ls, ru->src[i]).n;
    if (total > p->max_bytes) return MG_ETOOBIG;
  }
  int rc = scratch_reserve(p, &p->join, total);
  if (rc) return rc;
  size_t o = 0;
  for (size_t i = 0; i < ru->nsrc; i++) {
    if (i) {
      memcpy(p->join.p + o, ru->sep, ru->seplen);
      o += ru->seplen;
    }
    mg_str_t v = mg_labels_get(ls, ru->src[i]);
    if (v.n) memcpy(p->join.p + o, v.p, v.n);
    o += v.n;
  }
  *val = mg_str_n(p->join.p, o);
  return 0;
}

/* Expands a template for the current match into the arena (or returns the
 * rule's own text when it has no references). */
static int expand_arena(mg_labels_priv_t *p, const tpl_t *t, const rx_t *rx, const char *src, mg_str_t *out) {
  if (t->literal) {
    *out = mg_str_n(t->text, t->len);
    return 0;
  }
  size_t n = tpl_expand(t, rx, src, p->caps, NULL);
  int rc = 0;
  char *d = n ? arena_alloc(p, n, &rc) : (char *)"";
  if (!d) return rc;
  tpl_expand(t, rx, src, p->caps, d);
  *out = mg_str_n(d, n);
  return 0;
}

static int do_replace(mg_labels_t *ls, const rule_t *ru) {
  mg_labels_priv_t *p = ls->priv;
  mg_str_t val;
  subj_t sj;
  int rc = join_sources(ls, ru, &val);
  if (!rc) rc = subj_prepare(p, &sj, val.p, val.n);
  if (!rc) rc = rx_exec(p, &ru->rx, &sj, 0);
  if (rc <= 0) return rc; /* no match: nothing to do */
  mg_str_t target = mg_str_n(ru->target.text, ru->target.len);
  bool copy = false;
  if (!ru->target.literal) {
    size_t n = tpl_expand(&ru->target, &ru->rx, val.p, p->caps, NULL);
    if ((rc = scratch_reserve(p, &p->tgt, n))) return rc;
    tpl_expand(&ru->target, &ru->rx, val.p, p->caps, p->tgt.p);
    target = mg_str_n(p->tgt.p, n);
    copy = true;
  }
  if (!mg_parse_valid_label_name(target)) return 0;
  mg_str_t value;
  if ((rc = expand_arena(p, &ru->repl, &ru->rx, val.p, &value))) return rc;
  return lset(ls, target, value, copy);
}

static int do_case(mg_labels_t *ls, const rule_t *ru, bool upper) {
  mg_labels_priv_t *p = ls->priv;
  mg_str_t val;
  int rc = join_sources(ls, ru, &val);
  if (rc) return rc;
  size_t n = map_case(val.p, val.n, upper, NULL);
  char *d = n ? arena_alloc(p, n, &rc) : (char *)"";
  if (!d) return rc;
  map_case(val.p, val.n, upper, d);
  return lset(ls, mg_str_n(ru->target.text, ru->target.len), mg_str_n(d, n), false);
}

static int do_hashmod(mg_labels_t *ls, const rule_t *ru) {
  mg_str_t val;
  int rc = join_sources(ls, ru, &val);
  if (rc) return rc;
  unsigned char sum[MD5_DIGEST_LENGTH];
  MD5_CTX c;
  MD5_Init(&c);
  MD5_Update(&c, val.p, val.n);
  MD5_Final(sum, &c);
  /* Prometheus: binary.BigEndian.Uint64(sum[8:]) % modulus. */
  uint64_t h = 0;
  for (int i = 8; i < 16; i++) h = h << 8 | sum[i];
  char num[24];
  int n = snprintf(num, sizeof num, "%llu", (unsigned long long)(h % ru->modulus));
  char *d = arena_alloc(ls->priv, (size_t)n, &rc);
  if (!d) return rc;
  memcpy(d, num, (size_t)n);
  return lset(ls, mg_str_n(ru->target.text, ru->target.len), mg_str_n(d, (size_t)n), false);
}

/* Go's Regexp.ReplaceAllString(src, repl) into p->lm; *out views it. */
static int replace_all(mg_labels_priv_t *p, const rule_t *ru, const subj_t *sj, mg_str_t *out) {
  size_t last = 0, pos = 0, o = 0;
  int rc = 1; /* the caller found the first match at 0 */
  while (pos <= sj->n) {
    if (pos > 0 && (rc = rx_exec(p, &ru->rx, sj, pos)) <= 0) break;
    size_t a0 = p->caps[0], a1 = p->caps[1];
    size_t add = a0 - last;
    bool expand = a1 > last || a0 == 0; /* no empty match right after a match */
    size_t en = expand ? tpl_expand(&ru->repl, &ru->rx, sj->s, p->caps, NULL) : 0;
    if ((rc = scratch_reserve(p, &p->lm, o + add + en))) return rc;
    memcpy(p->lm.p + o, sj->s + last, add);
    o += add;
    if (expand) o += tpl_expand(&ru->repl, &ru->rx, sj->s, p->caps, p->lm.p + o);
    last = a1;
    size_t w = 0;
    if (pos < sj->n) utf8_decode((const unsigned char *)sj->s + pos, sj->n - pos, &w);
    if (pos + w > a1) pos += w;
    else if (pos + 1 > a1) pos++;
    else pos = a1;
  }
  if (rc < 0) return rc;
  size_t add = sj->n - last;
  if ((rc = scratch_reserve(p, &p->lm, o + add))) return rc;
  memcpy(p->lm.p + o, sj->s + last, add);
  *out = mg_str_n(p->lm.p, o + add);
  return 0;
}

static int do_labelmap(mg_labels_t *ls, const rule_t *ru) {
  mg_labels_priv_t *p = ls->priv;
  /* Prometheus ranges over a snapshot: the labels present when the rules
   * started, in name order, then those set since, in the order set. */
  if (ls->n > p->snap_cap) {
    snap_t *s = mg_reallocarray(p->snap, ls->n, sizeof *s);
    if (!s) return MG_ENOMEM;
    p->snap = s;
    p->snap_cap = ls->n;
  }
  size_t n = 0, nbase;
  for (size_t i = 0; i < ls->n; i++)
    if (p->seq[i] <= p->seq_base) p->snap[n++] = (snap_t){ls->v[i], p->seq[i]};
  nbase = n;
  for (size_t i = 0; i < ls->n; i++) {
    if (p->seq[i] <= p->seq_base) continue;
    snap_t s = {ls->v[i], p->seq[i]};
    size_t j = n++;
    while (j > nbase && p->snap[j - 1].seq > s.seq) {
      p->snap[j] = p->snap[j - 1];
      j--;
    }
    p->snap[j] = s;
  }
  for (size_t i = 0; i < n; i++) {
    mg_label_t l = p->snap[i].l;
    subj_t sj;
    int rc = subj_prepare(p, &sj, l.name.p, l.name.n);
    if (!rc) rc = rx_exec(p, &ru->rx, &sj, 0);
    if (rc < 0) return rc;
    if (!rc) continue;
    mg_str_t name;
    bool copy = true;
    if (ru->rx.whole) { /* the one match is the whole name: just expand */
      if (ru->repl.literal) {
        name = mg_str_n(ru->repl.text, ru->repl.len);
        copy = false;
      } else {
        size_t k = tpl_expand(&ru->repl, &ru->rx, sj.s, p->caps, NULL);
        if ((rc = scratch_reserve(p, &p->lm, k))) return rc;
        tpl_expand(&ru->repl, &ru->rx, sj.s, p->caps, p->lm.p);
        name = mg_str_n(p->lm.p, k);
      }
    } else if ((rc = replace_all(p, ru, &sj, &name))) {
      return rc;
    }
    if ((rc = lset(ls, name, l.value, copy))) return rc;
  }
  return 0;
}

static int do_labelfilter(mg_labels_t *ls, const rule_t *ru, bool keep_matching) {
  mg_labels_priv_t *p = ls->priv;
  size_t o = 0;
  for (size_t i = 0; i < ls->n; i++) {
    subj_t sj;
    int rc = subj_prepare(p, &sj, ls->v[i].name.p, ls->v[i].name.n);
    if (!rc) rc = rx_exec(p, &ru->rx, &sj, 0);
    if (rc < 0) return rc;
    if ((rc == 1) != keep_matching) continue;
    ls->v[o] = ls->v[i];
    p->seq[o] = p->seq[i];
    o++;
  }
  ls->n = o;
  return 0;
}

/* One rule (Prometheus's relabel()). *keep = false drops the set. */
static int rule_apply(mg_labels_t *ls, const rule_t *ru, bool *keep) {
  mg_labels_priv_t *p = ls->priv;
  mg_str_t val;
  subj_t sj;
  int rc;
  switch (ru->action) {
  case A_KEEP:
  case A_DROP:
    rc = join_sources(ls, ru, &val);
    if (!rc) rc = subj_prepare(p, &sj, val.p, val.n);
    if (!rc) rc = rx_exec(p, &ru->rx, &sj, 0);
    if (rc >= 0) *keep = (rc == 1) == (ru->action == A_KEEP);
    return rc < 0 ? rc : 0;
  case A_KEEPEQUAL:
  case A_DROPEQUAL:
    if ((rc = join_sources(ls, ru, &val))) return rc;
    *keep = mg_str_eq(mg_labels_get(ls, mg_str_n(ru->target.text, ru->target.len)), val) == (ru->action == A_KEEPEQUAL);
    return 0;
  case A_REPLACE:
    return do_replace(ls, ru);
  case A_LOWERCASE:
    return do_case(ls, ru, false);
  case A_UPPERCASE:
    return do_case(ls, ru, true);
  case A_HASHMOD:
    return do_hashmod(ls, ru);
  case A_LABELMAP:
    return do_labelmap(ls, ru);
  case A_LABELDROP:
    return do_labelfilter(ls, ru, false);
  case A_LABELKEEP:
    return do_labelfilter(ls, ru, true);
  }
  return 0;
}

int mg_relabel_apply(const mg_relabel_t *r, mg_labels_t *ls, bool *keep) {
  *keep = true;
  if (!r || !r->n) return 0;
  mg_labels_priv_t *p = ls->priv;
  int rc = md_ensure(p, r->max_pairs);
  p->seq_base = p->seq_next; /* everything present now is "base" */
  for (size_t i = 0; !rc && *keep && i < r->n; i++) rc = rule_apply(ls, &r->rules[i], keep);
  if (rc) *keep = false;
  return rc;
}
