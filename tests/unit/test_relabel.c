/* Unit tests for mg_relabel: every action with its edge cases, RE2 syntax
 * and Go's matching rules (anchoring, dot and newlines, UTF-8, (?i)),
 * Go's $-expansion, hashmod values, the config checks with their
 * messages, and the builder's bounds and allocation behaviour. Expected
 * results come from Prometheus's documented behaviour and its own test
 * vectors, not from this implementation. */
#include <stdbool.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"
#include "mg_relabel.h"
#include "mg_test.h"

#define MAXR 6
#define MAXL 24

/* One rule as written; NULL = not set. src is NULL-terminated. */
typedef struct rspec {
  const char *action;
  const char *src[5];
  const char *sep, *regex, *target, *repl;
  uint64_t modulus;
  uint32_t line;
} rspec_t;

typedef struct rules {
  mg_conf_relabel_t r[MAXR];
  mg_conf_relabel_t *p[MAXR];
  mg_conf_relabels_t rs;
} rules_t;

static void build(rules_t *b, const rspec_t *spec) {
  memset(b, 0, sizeof *b);
  size_t n = 0;
  for (; n < MAXR && (spec[n].action || spec[n].src[0] || spec[n].target || spec[n].regex || spec[n].repl); n++) {
    mg_conf_relabel_t *r = &b->r[n];
    size_t k = 0;
    while (k < 5 && spec[n].src[k]) k++;
    r->source_labels = (char **)spec[n].src;
    r->nsource_labels = k;
    r->separator = (char *)spec[n].sep;
    r->regex = (char *)spec[n].regex;
    r->target_label = (char *)spec[n].target;
    r->replacement = (char *)spec[n].repl;
    r->action = (char *)spec[n].action;
    r->modulus = spec[n].modulus;
    r->line = spec[n].line;
    b->p[n] = r;
  }
  b->rs.v = b->p;
  b->rs.n = b->rs.cap = n;
}

/* A case: rules, input labels (name, value, ..., NULL), and the expected
 * labels in name order, or drop. */
#define DROPPED "\x01dropped"

typedef struct rcase {
  const char *name;
  rspec_t rules[MAXR];
  const char *in[MAXL];
  const char *out[MAXL]; /* or {DROPPED} */
} rcase_t;

static void print_labels(const char *what, const mg_labels_t *ls) {
  fprintf(stderr, "    %s:", what);
  for (size_t i = 0; i < ls->n; i++)
    fprintf(stderr, " %.*s=\"%.*s\"", (int)ls->v[i].name.n, ls->v[i].name.p, (int)ls->v[i].value.n,
            ls->v[i].value.p);
  fprintf(stderr, "\n");
}

static void run_case(const rcase_t *c) {
  rules_t b;
  build(&b, c->rules);
  mg_relabel_t *r = NULL;
  char err[512];
  int rc = mg_relabel_compile(&b.rs, &r, err, sizeof err);
  if (rc) {
    MG_FAIL_("case %s: compile failed: %s", c->name, err);
    return;
  }
  mg_labels_t ls;
  REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
  for (size_t i = 0; c->in[i]; i += 2) CHECK_INT(mg_labels_set(&ls, mg_str(c->in[i]), mg_str(c->in[i + 1])), 0);
  bool keep;
  rc = mg_relabel_apply(r, &ls, &keep);
  if (rc) MG_FAIL_("case %s: apply returned %s", c->name, mg_err_name(rc));
  bool drop = c->out[0] && strcmp(c->out[0], DROPPED) == 0;
  if (keep == drop) MG_FAIL_("case %s: keep=%d, want %d", c->name, keep, !drop);
  if (!rc && keep && !drop) {
    size_t n = 0;
    bool same = true;
    for (; c->out[2 * n]; n++) {
      if (n >= ls.n || !mg_str_eq(ls.v[n].name, mg_str(c->out[2 * n])) ||
          !mg_str_eq(ls.v[n].value, mg_str(c->out[2 * n + 1])))
        same = false;
    }
    if (n != ls.n) same = false;
    if (!same) {
      MG_FAIL_("case %s: labels differ", c->name);
      print_labels("got ", &ls);
      fprintf(stderr, "    want:");
      for (size_t i = 0; c->out[i]; i += 2) fprintf(stderr, " %s=\"%s\"", c->out[i], c->out[i + 1]);
      fprintf(stderr, "\n");
    }
  }
  mg_labels_cleanup(&ls);
  mg_relabel_free(r);
}

#define RUN_ALL(cases)                                                       \
  for (size_t i_ = 0; i_ < sizeof cases / sizeof cases[0]; i_++) run_case(&cases[i_])

/* ---- replace ------------------------------------------------------------ */

static const rcase_t replace_cases[] = {
    {"groups twice (Prometheus)",
     {{.src = {"a"}, .regex = "f(.*)", .target = "d", .repl = "ch${1}-ch${1}"}},
     {"a", "foo", "b", "bar", "c", "baz", NULL},
     {"a", "foo", "b", "bar", "c", "baz", "d", "choo-choo", NULL}},
    {"two sources, rules see earlier results (Prometheus)",
     {{.src = {"a", "b"}, .regex = "f(.*);(.*)r", .target = "a", .repl = "b${1}${2}m"},
      {.src = {"c", "a"}, .regex = "(b).*b(.*)ba(.*)", .target = "d", .repl = "$1$2$2$3"}},
     {"a", "foo", "b", "bar", "c", "baz", NULL},
     {"a", "boobam", "b", "bar", "c", "baz", "d", "boooom", NULL}},
    {"no match: nothing happens",
     {{.src = {"a"}, .regex = "f", .target = "b", .repl = "bar"}},
     {"a", "boo", NULL},
     {"a", "boo", NULL}},
    {"anchored: a does not match ba",
     {{.src = {"a"}, .regex = "a", .target = "t", .repl = "hit"}},
     {"a", "ba", NULL},
     {"a", "ba", NULL}},
    {"anchored: a matches a",
     {{.src = {"a"}, .regex = "a", .target = "t", .repl = "hit"}},
     {"a", "a", NULL},
     {"a", "a", "t", "hit", NULL}},
    {"defaults copy the value",
     {{.src = {"a"}, .target = "b"}},
     {"a", "x y", NULL},
     {"a", "x y", "b", "x y", NULL}},
    {"absent source is empty: $1 empty deletes target",
     {{.src = {"nope"}, .target = "b"}},
     {"a", "1", "b", "2", NULL},
     {"a", "1", NULL}},
    {"absent source, literal replacement sets",
     {{.src = {"nope"}, .target = "t", .repl = "x"}},
     {"a", "1", NULL},
     {"a", "1", "t", "x", NULL}},
    {"no source labels: value is empty",
     {{.action = "replace", .target = "env", .repl = "prod"}},
     {"a", "1", NULL},
     {"a", "1", "env", "prod", NULL}},
    {"empty replacement deletes",
     {{.src = {"a"}, .target = "a", .repl = ""}},
     {"a", "1", "b", "2", NULL},
     {"b", "2", NULL}},
    {"target from groups (Prometheus)",
     {{.src = {"a"}, .regex = "some-([^-]+)-([^,]+)", .target = "${1}", .repl = "${2}"}},
     {"a", "some-name-value", NULL},
     {"a", "some-name-value", "name", "value", NULL}},
    {"target expands to an invalid name: skipped (Prometheus)",
     {{.src = {"a"}, .regex = "some-([^-]+)-([^,]+)", .target = "${3}", .repl = "${1}"},
      {.src = {"a"}, .regex = "some-([^-]+)-([^,]+)", .target = "${2}", .repl = "${1}"},
      {.src = {"a"}, .regex = "some-([^-]+)(-[^,]+)", .target = "${2}", .repl = "${1}"}},
     {"a", "some-name-0", NULL},
     {"a", "some-name-0", NULL}},
    {"replacement of a missing group deletes nothing that is absent (Prometheus)",
     {{.src = {"a"}, .regex = "some-([^-]+)-([^,]+)", .target = "${1}", .repl = "${3}"}},
     {"a", "some-name-value", NULL},
     {"a", "some-name-value", NULL}},
    {"real-life tag parsing (Prometheus)",
     {{.src = {"__meta_sd_tags"}, .regex = "(?:.+,|^)path:(/[^,]+).*", .target = "__metrics_path__", .repl = "${1}"},
      {.src = {"__meta_sd_tags"}, .regex = "(?:.+,|^)job:([^,]+).*", .target = "job", .repl = "${1}"},
      {.src = {"__meta_sd_tags"}, .regex = "(?:.+,|^)label:([^=]+)=([^,]+).*", .target = "${1}", .repl = "${2}"}},
     {"__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar", NULL},
     {"__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar", "__metrics_path__", "/secret", "foo", "bar",
      "job", "some-job", NULL}},
    {"address and port",
     {{.src = {"__address__", "__meta_port"}, .regex = "([^:]+)(?::\\d+)?;(\\d+)", .target = "__address__",
       .repl = "$1:$2"}},
     {"__address__", "10.0.0.1:80", "__meta_port", "9100", NULL},
     {"__address__", "10.0.0.1:9100", "__meta_port", "9100", NULL}},
};

MG_TEST(replace) { RUN_ALL(replace_cases); }

/* ---- Go's Expand: $1x, $$, ${1}, names, malformed references ----------- */

static const rcase_t expand_cases[] = {
    {"$1x names group \"1x\", which is empty",
     {{.src = {"a"}, .regex = "(.)(.*)", .target = "b", .repl = "$1x"}},
     {"a", "abc", "b", "old", NULL},
     {"a", "abc", NULL}},
    {"${1}x",
     {{.src = {"a"}, .regex = "(.)(.*)", .target = "b", .repl = "${1}x"}},
     {"a", "abc", NULL},
     {"a", "abc", "b", "ax", NULL}},
    {"$$ is a dollar",
     {{.src = {"a"}, .regex = "(.*)", .target = "b", .repl = "$$1 a$$$1"}},
     {"a", "v", NULL},
     {"a", "v", "b", "$1 a$v", NULL}},
    {"named groups, (?P<n>) and (?<n>)",
     {{.src = {"__address__"}, .regex = "(?P<host>[^:]+):(?<port>\\d+)", .target = "port", .repl = "$port"},
      {.src = {"__address__"}, .regex = "(?P<host>[^:]+):(?<port>\\d+)", .target = "host", .repl = "${host}_x"}},
     {"__address__", "db1:9100", NULL},
     {"__address__", "db1:9100", "host", "db1_x", "port", "9100", NULL}},
    {"duplicate names: first group that took part",
     {{.src = {"a"}, .regex = "(?P<n>x)|(?P<n>y)", .target = "b", .repl = "[$n]"}},
     {"a", "y", NULL},
     {"a", "y", "b", "[y]", NULL}},
    {"group beyond the count and unknown name are empty",
     {{.src = {"a"}, .regex = "(a)(b)", .target = "b", .repl = "<$9|${nope}|$0>"}},
     {"a", "ab", NULL},
     {"a", "ab", "b", "<||ab>", NULL}},
    {"leading zero is a name, not a number",
     {{.src = {"a"}, .regex = "(a)", .target = "b", .repl = "<$01>"}},
     {"a", "a", NULL},
     {"a", "a", "b", "<>", NULL}},
    {"malformed references stay text",
     {{.src = {"a"}, .regex = "(a)", .target = "b", .repl = "${1 $- x$ ${}"}},
     {"a", "a", NULL},
     {"a", "a", "b", "${1 $- x$ ${}", NULL}},
    {"Unicode letters and digits extend a name; a symbol does not",
     {{.src = {"a"}, .regex = "(a)", .target = "b", .repl = "1$\xc3\xa9t 2$\xd9\xa1 3$\xe2\x82\xac"}},
     {"a", "a", NULL},
     {"a", "a", "b", "1 2 3$\xe2\x82\xac", NULL}},
    {"unmatched optional group is empty",
     {{.src = {"a"}, .regex = "(x)?(a)", .target = "b", .repl = "[$1$2]"}},
     {"a", "a", NULL},
     {"a", "a", "b", "[a]", NULL}},
};

MG_TEST(expand) { RUN_ALL(expand_cases); }

/* ---- regex dialect: RE2 as Go runs it ----------------------------------- */

/* keep rules: each case keeps iff the regex matches the value of a. */
typedef struct mcase {
  const char *regex, *value;
  bool match;
} mcase_t;

static const mcase_t match_cases[] = {
    /* Prometheus >= 3.0 anchors as ^(?s:REGEX)$: . matches newline. */
    {"foo.bar", "foo\nbar", true},
    {"(.*)", "multi\nline\n", true},
    {"(?-s:foo.bar)", "foo\nbar", false},
    {"foo", "foo\n", false}, /* $ is the very end, not before a final newline */
    {"foo$", "foo\n", false},
    {"foo\\n", "foo\n", true},
    {"(?m).*^bar$", "foo\nbar", true},
    {"(?m)foo$.*", "foo\nbar", true},
    {"(?m)^a\\n^$", "a\n", true}, /* ^ after a trailing newline */
    {"ba", "ba", true},
    {"a|b", "ab", false},
    {"f|o", "foo", false},
    {"", "", true},
    {"", "x", false},
    /* the wrapping can be escaped with an unbalanced ): ^(?s:a)|(b)$ */
    {"a)|(b", "ax", true},
    {"a)|(b", "xb", true},
    {"a)|(b", "xa", false},
    /* UTF-8: one rune per ., classes on runes, invalid bytes are U+FFFD */
    {".", "\xc3\xa9", true},
    {"..", "\xc3\xa9", false},
    {"[^a]", "\xe2\x82\xac", true},
    {"\\x{e9}", "\xc3\xa9", true},
    {"\\xe9", "\xc3\xa9", true},
    {".", "\xff", true},
    {"\\x{fffd}", "\xff", true},
    {"a.b", "a\xe2\x82" "b", false}, /* a truncated sequence is two U+FFFD */
    {"a..b", "a\xe2\x82" "b", true},
    {"\\p{Greek}+", "\xce\xb1\xce\xb2", true},
    {"\\pL+", "\xc3\xa9" "a", true},
    {"\\p{^L}", "1", true},
    {"\\PL", "a", false},
    {"\\p{C}", "\xcd\xb8", false}, /* U+0378 unassigned: not in Go's C */
    {"\\P{C}", "\xcd\xb8", true},
    {"\\p{Any}", "\xf0\x9f\x98\x80", true},
    {"[\\p{Han}a]+", "a\xe4\xb8\xad", true},
    /* ASCII classes */
    {"\\s", "\v", false}, /* Go's \s has no \v */
    {"[[:space:]]", "\v", true},
    {"\\d", "\xd9\xa1", false}, /* ARABIC-INDIC DIGIT ONE */
    {"\\w+", "a_1", true},
    {"\\w", "\xc3\xa9", false},
    {"\\bx\\b", "x", true},
    {"\\b\xc3\xa9", "\xc3\xa9", false}, /* no ASCII word char: no boundary */
    {"[[:^alpha:]]", "1", true},
    {"[[:word:][:punct:]]+", "a_!", true},
    {"[]a]+", "]a", true},
    {"[a-]+", "a-", true},
    {"[a-b-c]+", "a-c", true},
    {"[^\\n]", "\n", false},
    {"[^a]", "\n", true},
    {"\\x{D800}", "\xef\xbf\xbd", false},
    {"[\\x{D7FF}-\\x{E000}]", "\xee\x80\x80", true},
    /* case folding */
    {"(?i)FOO", "fOo", true},
    {"(?i:A)a", "aa", true},
    {"(?i:A)a", "aA", false},
    {"(?i)k", "\xe2\x84\xaa", true}, /* KELVIN SIGN folds to k */
    {"(?i)s", "\xc5\xbf", true},     /* LATIN SMALL LETTER LONG S */
    /* Go's simple-fold orbits with three or more members */
    {"(?i)\xcf\x82", "\xce\xa3", true},         /* final sigma ~ SIGMA */
    {"(?i)\xcf\x82", "\xcf\x83", true},         /* final sigma ~ sigma */
    {"(?i)\xc3\x9f", "\xe1\xba\x9e", true},     /* sharp s ~ capital sharp s */
    {"(?i)\xc2\xb5", "\xce\x9c", true},         /* micro ~ MU */
    {"(?i)\xc3\xa5", "\xe2\x84\xab", true},     /* a ring ~ ANGSTROM SIGN */
    {"(?i)\xce\xb8", "\xcf\x91", true},         /* theta ~ theta symbol */
    {"(?i)\xce\xb9", "\xe1\xbe\xbe", true},     /* iota ~ prosgegrammeni */
    {"(?i)[^k]", "\xe2\x84\xaa", false},
    {"(?i)[^\xcf\x83]", "\xcf\x82", false},
    {"(?i)[^\xcf\x83]", "x", true},
    {"(?i)i", "\xc4\xb1", false},               /* no Turkish folding */
    {"(?i)i", "\xc4\xb0", false},
    {"(?i)[a-c]+", "ABC", true},
    {"(?i)\\w", "\xe2\x84\xaa", true},
    {"(?i)\\W", "\xe2\x84\xaa", false},
    {"(?i)[\\W]", "s", false},
    {"(?i)[^\\W]", "\xc5\xbf", true},
    {"(?i)[[:upper:]]", "a", true},
    {"(?i)\\p{Han}", "\xe4\xb8\xad", true},
    {"(?i)a(?-i)a", "AA", false},
    /* escapes and literals */
    {"a\\12b", "a\nb", true}, /* octal */
    {"\\0", "\x01", false},
    {"\\Qa.b\\E", "a.b", true},
    {"\\Qa.b\\E", "axb", false},
    {"\\.\\_\\-", "._-", true},
    {"\\a\\f\\t\\v\\r", "\a\f\t\v\r", true},
    {"a{,2}", "a{,2}", true}, /* not a repetition in Go */
    {"a{,2}", "aa", false},
    {"x{01}", "x{01}", true},
    {"a{2}", "aa", true},
    {"a{2}", "aaa", false},
    {"a{2,}", "aaaa", true},
    {"a{1,2}", "aaa", false},
    {"a{0}", "", true},
    {"(?:a{2}){500}", "", false},
    {"}]", "}]", true},
    {"^*a", "a", true}, /* Go repeats empty assertions */
    {"a*(?i)*", "aaa", true},
    {"a*\\Q\\E*", "aa", true},
    {"(?)a", "a", true},
    {"(?U)a+", "aaa", true},
    {"#x", "#x", true},
    {" a ", " a ", true},
};

MG_TEST(regex_matching) {
  for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
    const mcase_t *m = &match_cases[i];
    rspec_t spec[2] = {{.action = "keep", .src = {"a"}, .regex = m->regex}};
    rules_t b;
    build(&b, spec);
    mg_relabel_t *r = NULL;
    char err[512];
    if (mg_relabel_compile(&b.rs, &r, err, sizeof err) != 0) {
      MG_FAIL_("regex %s: %s", m->regex, err);
      continue;
    }
    mg_labels_t ls;
    REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
    mg_labels_set(&ls, MG_STR_LIT("a"), mg_str(m->value));
    if (!*m->value) mg_labels_set(&ls, MG_STR_LIT("z"), MG_STR_LIT("1")); /* a is absent: "" */
    bool keep;
    CHECK_INT(mg_relabel_apply(r, &ls, &keep), 0);
    if (keep != m->match) MG_FAIL_("regex \"%s\" on \"%s\": match=%d, want %d", m->regex, m->value, keep, m->match);
    mg_labels_cleanup(&ls);
    mg_relabel_free(r);
  }
}

static const rcase_t capture_cases[] = {
    {"(?U) makes + and * lazy",
     {{.src = {"a"}, .regex = "(?U)(a+)(a*)", .target = "g", .repl = "$1|$2"},
      {.src = {"a"}, .regex = "(a+)(a*)", .target = "h", .repl = "$1|$2"}},
     {"a", "aaa", NULL},
     {"a", "aaa", "g", "a|aa", "h", "aaa|", NULL}},
    {"lazy quantifier",
     {{.src = {"a"}, .regex = "(.*?)(\\d*)", .target = "g", .repl = "$1|$2"}},
     {"a", "ab12", NULL},
     {"a", "ab12", "g", "ab|12", NULL}},
    {"leftmost-first alternation",
     {{.src = {"a"}, .regex = "(a|ab)(c|bcd)(d*)", .target = "g", .repl = "$1|$2|$3"}},
     {"a", "abcd", NULL},
     {"a", "abcd", "g", "a|bcd|", NULL}},
    {"captures keep invalid bytes as they were",
     {{.src = {"a"}, .regex = "(.)(.*)", .target = "g", .repl = "$2$1"}},
     {"a", "\xff" "b\xc3\xa9", NULL},
     {"a", "\xff" "b\xc3\xa9", "g", "b\xc3\xa9\xff", NULL}},
    {"capture of a multi-byte rune",
     {{.src = {"a"}, .regex = "(.)(.*)", .target = "g", .repl = "$1"}},
     {"a", "\xc3\xa9" "a", NULL},
     {"a", "\xc3\xa9" "a", "g", "\xc3\xa9", NULL}},
    {"multi-line value copied whole",
     {{.src = {"a"}, .target = "b"}},
     {"a", "l1\nl2\n", NULL},
     {"a", "l1\nl2\n", "b", "l1\nl2\n", NULL}},
    {"unbalanced ) search: leftmost match, its groups",
     {{.src = {"a"}, .regex = "a)|(b", .target = "g", .repl = "[$1]"}},
     {"a", "xb", NULL},
     {"a", "xb", "g", "[b]", NULL}},
};

MG_TEST(regex_captures) { RUN_ALL(capture_cases); }

/* ---- separator ------------------------------------------------------------ */

static const rcase_t sep_cases[] = {
    {"default ;",
     {{.src = {"a", "b", "c"}, .target = "j"}},
     {"a", "1", "b", "2", "c", "3", NULL},
     {"a", "1", "b", "2", "c", "3", "j", "1;2;3", NULL}},
    {"empty separator",
     {{.src = {"a", "b"}, .sep = "", .target = "j"}},
     {"a", "1", "b", "2", NULL},
     {"a", "1", "b", "2", "j", "12", NULL}},
    {"long separator, absent middle value",
     {{.src = {"a", "x", "b"}, .sep = "--", .target = "j"}},
     {"a", "1", "b", "2", NULL},
     {"a", "1", "b", "2", "j", "1----2", NULL}},
    {"same label twice",
     {{.src = {"a", "a"}, .sep = "/", .target = "j"}},
     {"a", "1", NULL},
     {"a", "1", "j", "1/1", NULL}},
    {"separator in keep",
     {{.action = "keep", .src = {"a", "b"}, .sep = ",", .regex = "1,2"}},
     {"a", "1", "b", "2", NULL},
     {"a", "1", "b", "2", NULL}},
};

MG_TEST(separator) { RUN_ALL(sep_cases); }

/* ---- keep, drop, keepequal, dropequal ------------------------------------- */

static const rcase_t filter_cases[] = {
    {"drop on match (Prometheus)", {{.action = "drop", .src = {"a"}, .regex = ".*o.*"}}, {"a", "foo", NULL}, {DROPPED}},
    {"drop stops the rules (Prometheus)",
     {{.action = "drop", .src = {"a"}, .regex = ".*o.*"},
      {.src = {"a"}, .regex = "f(.*)", .target = "d", .repl = "ch$1-ch$1"}},
     {"a", "foo", NULL},
     {DROPPED}},
    {"drop without match", {{.action = "drop", .src = {"a"}, .regex = "no-match"}}, {"a", "foo", NULL}, {"a", "foo", NULL}},
    {"drop: alternation is anchored", {{.action = "drop", .src = {"a"}, .regex = "f|o"}}, {"a", "foo", NULL}, {"a", "foo", NULL}},
    {"keep without match", {{.action = "keep", .src = {"a"}, .regex = "no-match"}}, {"a", "foo", NULL}, {DROPPED}},
    {"keep on match", {{.action = "keep", .src = {"a"}, .regex = "f.*"}}, {"a", "foo", NULL}, {"a", "foo", NULL}},
    {"keep with default regex keeps all", {{.action = "keep", .src = {"x"}}}, {"a", "1", NULL}, {"a", "1", NULL}},
    {"keep empty regex, absent label", {{.action = "keep", .src = {"x"}, .regex = ""}}, {"a", "1", NULL}, {"a", "1", NULL}},
    {"keep empty regex, present label", {{.action = "keep", .src = {"a"}, .regex = ""}}, {"a", "1", NULL}, {DROPPED}},
    {"keepequal equal (Prometheus)",
     {{.action = "keepequal", .src = {"__tmp_port"}, .target = "__port1"}},
     {"__tmp_port", "1234", "__port1", "1234", "__port2", "5678", NULL},
     {"__port1", "1234", "__port2", "5678", "__tmp_port", "1234", NULL}},
    {"keepequal differs (Prometheus)",
     {{.action = "keepequal", .src = {"__tmp_port"}, .target = "__port2"}},
     {"__tmp_port", "1234", "__port1", "1234", "__port2", "5678", NULL},
     {DROPPED}},
    {"dropequal equal (Prometheus)",
     {{.action = "dropequal", .src = {"__tmp_port"}, .target = "__port1"}},
     {"__tmp_port", "1234", "__port1", "1234", "__port2", "5678", NULL},
     {DROPPED}},
    {"dropequal differs (Prometheus)",
     {{.action = "dropequal", .src = {"__tmp_port"}, .target = "__port2"}},
     {"__tmp_port", "1234", "__port1", "1234", NULL},
     {"__port1", "1234", "__tmp_port", "1234", NULL}},
    {"keepequal: absent == absent", {{.action = "keepequal", .src = {"x"}, .target = "y"}}, {"a", "1", NULL}, {"a", "1", NULL}},
    {"dropequal: absent == absent", {{.action = "dropequal", .src = {"x"}, .target = "y"}}, {"a", "1", NULL}, {DROPPED}},
    {"keepequal joins sources",
     {{.action = "keepequal", .src = {"a", "b"}, .target = "c"}},
     {"a", "1", "b", "2", "c", "1;2", NULL},
     {"a", "1", "b", "2", "c", "1;2", NULL}},
    {"action names are case-insensitive",
     {{.action = "KEEP", .src = {"a"}, .regex = "1"}, {.action = "Replace", .target = "b", .repl = "x"},
      {.action = "\xe2\x84\xaa" "eep", .src = {"b"}, .regex = "x"}}, /* KELVIN SIGN lower-cases to k */
     {"a", "1", NULL},
     {"a", "1", "b", "x", NULL}},
};

MG_TEST(keep_drop) { RUN_ALL(filter_cases); }

/* ---- hashmod ---------------------------------------------------------------
 * Expected values: int.from_bytes(hashlib.md5(v.encode()).digest()[8:],
 * 'big') % m in Python; 976 and 734 are also Prometheus's own vectors. */

static const rcase_t hashmod_cases[] = {
    {"baz % 1000 = 976 (Prometheus)",
     {{.action = "hashmod", .src = {"c"}, .target = "d", .modulus = 1000}},
     {"a", "foo", "b", "bar", "c", "baz", NULL},
     {"a", "foo", "b", "bar", "c", "baz", "d", "976", NULL}},
    {"multi-line value (Prometheus)",
     {{.action = "hashmod", .src = {"a"}, .target = "b", .modulus = 1000}},
     {"a", "foo\nbar", NULL},
     {"a", "foo\nbar", "b", "734", NULL}},
    {"absent source hashes \"\"",
     {{.action = "hashmod", .src = {"x"}, .target = "s", .modulus = 10}},
     {"a", "1", NULL},
     {"a", "1", "s", "8", NULL}},
    {"sharding by address",
     {{.action = "hashmod", .src = {"__address__"}, .target = "__tmp_hash", .modulus = 3},
      {.action = "keep", .src = {"__tmp_hash"}, .regex = "2"}},
     {"__address__", "10.0.0.1:9100", NULL},
     {"__address__", "10.0.0.1:9100", "__tmp_hash", "2", NULL}},
    {"joined value, modulus 2^64-1",
     {{.action = "hashmod", .src = {"a", "b"}, .target = "h", .modulus = UINT64_MAX}},
     {"a", "a", "b", "b", NULL},
     {"a", "a", "b", "b", "h", "2420134994223480074", NULL}},
    {"UTF-8 bytes",
     {{.action = "hashmod", .src = {"a"}, .target = "h", .modulus = 7}},
     {"a", "\xc3\xa9", NULL},
     {"a", "\xc3\xa9", "h", "3", NULL}},
    {"modulus 1", {{.action = "hashmod", .src = {"a"}, .target = "h", .modulus = 1}}, {"a", "x", NULL}, {"a", "x", "h", "0", NULL}},
    {"regex and replacement are ignored",
     {{.action = "hashmod", .src = {"c"}, .target = "d", .modulus = 1000, .regex = "nomatch", .repl = "zz"}},
     {"c", "baz", NULL},
     {"c", "baz", "d", "976", NULL}},
};

MG_TEST(hashmod) { RUN_ALL(hashmod_cases); }

/* ---- labelmap, labeldrop, labelkeep --------------------------------------- */

static const rcase_t labelmap_cases[] = {
    {"copy with prefix (Prometheus)",
     {{.action = "labelmap", .regex = "(b.*)", .repl = "bar_${1}"}},
     {"a", "foo", "b1", "bar", "b2", "baz", NULL},
     {"a", "foo", "b1", "bar", "b2", "baz", "bar_b1", "bar", "bar_b2", "baz", NULL}},
    {"strip meta prefix (Prometheus)",
     {{.action = "labelmap", .regex = "__meta_(my.*)", .repl = "${1}"}},
     {"a", "foo", "__meta_my_bar", "aaa", "__meta_my_baz", "bbb", "__meta_other", "ccc", NULL},
     {"__meta_my_bar", "aaa", "__meta_my_baz", "bbb", "__meta_other", "ccc", "a", "foo", "my_bar", "aaa", "my_baz",
      "bbb", NULL}},
    {"default replacement $1 with the kubernetes idiom",
     {{.action = "labelmap", .regex = "__meta_kubernetes_pod_label_(.+)"}},
     {"__meta_kubernetes_pod_label_app", "web", "x", "1", NULL},
     {"__meta_kubernetes_pod_label_app", "web", "app", "web", "x", "1", NULL}},
    {"anchored on the name",
     {{.action = "labelmap", .regex = "b", .repl = "c"}},
     {"ab", "1", "b1", "2", NULL},
     {"ab", "1", "b1", "2", NULL}},
    {"same target: the last in name order wins",
     {{.action = "labelmap", .regex = "__meta_(.*)", .repl = "x"}},
     {"__meta_a", "1", "__meta_b", "2", NULL},
     {"__meta_a", "1", "__meta_b", "2", "x", "2", NULL}},
    {"labels set by earlier rules come after the others",
     {{.target = "__meta_0", .repl = "late"}, {.action = "labelmap", .regex = "__meta_(.*)", .repl = "x"}},
     {"__meta_a", "1", "__meta_b", "2", NULL},
     {"__meta_0", "late", "__meta_a", "1", "__meta_b", "2", "x", "late", NULL}},
    {"a base label rewritten by a rule moves to the end",
     {{.target = "__meta_a", .repl = "again"}, {.action = "labelmap", .regex = "__meta_(.*)", .repl = "x"}},
     {"__meta_a", "1", "__meta_b", "2", NULL},
     {"__meta_a", "again", "__meta_b", "2", "x", "again", NULL}},
    {"values come from the snapshot",
     {{.action = "labelmap", .regex = "(a|b)", .repl = "b"}},
     {"a", "1", "b", "2", NULL},
     {"a", "1", "b", "2", NULL}},
    {"new labels are not visited again",
     {{.action = "labelmap", .regex = "(.*)", .repl = "x_${1}"}},
     {"a", "1", NULL},
     {"a", "1", "x_a", "1", NULL}},
    {"unbalanced ): replace-all on the name",
     {{.action = "labelmap", .regex = "a)|(b", .repl = "z"}},
     {"ab", "1", NULL},
     {"ab", "1", "zz", "1", NULL}},
    {"unbalanced ): unmatched text is kept",
     {{.action = "labelmap", .regex = "a)|(b", .repl = "z"}},
     {"ac", "1", NULL},
     {"ac", "1", "zc", "1", NULL}},
    {"unbalanced ) can turn on (?m) for the closing $",
     {{.action = "labelmap", .regex = ")(?m)(", .repl = "z"}},
     {"\nb", "1", "b", "2", NULL},
     {"\nb", "1", "b", "2", "z\nb", "1", NULL}},
    {"invalid names are created, as Prometheus does",
     {{.action = "labelmap", .regex = "(a)", .repl = "$2"}},
     {"a", "1", NULL},
     {"", "1", "a", "1", NULL}},
};

MG_TEST(labelmap) { RUN_ALL(labelmap_cases); }

static const rcase_t labeldrop_cases[] = {
    {"labelkeep (Prometheus)",
     {{.action = "labelkeep", .regex = "(b.*)"}},
     {"a", "foo", "b1", "bar", "b2", "baz", NULL},
     {"b1", "bar", "b2", "baz", NULL}},
    {"labeldrop (Prometheus)",
     {{.action = "labeldrop", .regex = "(b.*)"}},
     {"a", "foo", "b1", "bar", "b2", "baz", NULL},
     {"a", "foo", NULL}},
    {"labeldrop is anchored",
     {{.action = "labeldrop", .regex = "pod_template_hash"}},
     {"pod_template_hash", "x", "pod_template_hash2", "y", NULL},
     {"pod_template_hash2", "y", NULL}},
    {"labeldrop then replace then keep (Prometheus issue 12283)",
     {{.action = "labeldrop", .regex = "^__meta_kubernetes_pod_container_port_name$"},
      {.src = {"__meta_kubernetes_pod_annotation_XXX_metrics_port"}, .regex = "(.+)",
       .target = "__meta_kubernetes_pod_container_port_name", .repl = "metrics"},
      {.action = "keep", .src = {"__meta_kubernetes_pod_container_port_name"}, .regex = "^metrics$"}},
     {"__meta_kubernetes_pod_container_port_name", "foo", "__meta_kubernetes_pod_annotation_XXX_metrics_port",
      "9091", NULL},
     {"__meta_kubernetes_pod_annotation_XXX_metrics_port", "9091", "__meta_kubernetes_pod_container_port_name",
      "metrics", NULL}},
    {"labelkeep everything away leaves an empty set, kept",
     {{.action = "labelkeep", .regex = "nothing"}},
     {"a", "1", NULL},
     {NULL}},
};

MG_TEST(labeldrop_labelkeep) { RUN_ALL(labeldrop_cases); }

/* ---- lowercase, uppercase (Go's strings.ToLower/ToUpper) ------------------- */

static const rcase_t case_cases[] = {
    {"ASCII (Prometheus)",
     {{.action = "uppercase", .src = {"foo"}, .target = "foo_uppercase"},
      {.action = "lowercase", .src = {"foo"}, .target = "foo_lowercase"}},
     {"foo", "bAr123Foo", NULL},
     {"foo", "bAr123Foo", "foo_lowercase", "bar123foo", "foo_uppercase", "BAR123FOO", NULL}},
    {"Latin-1 and simple mappings",
     {{.action = "lowercase", .src = {"a"}, .target = "l"}, {.action = "uppercase", .src = {"a"}, .target = "u"}},
     {"a", "\xc3\x80\xc3\xa9 stra\xc3\x9f" "e", NULL}, /* "Àé straße" */
     {"a", "\xc3\x80\xc3\xa9 stra\xc3\x9f" "e", "l", "\xc3\xa0\xc3\xa9 stra\xc3\x9f" "e", "u",
      "\xc3\x80\xc3\x89 STRA\xc3\x9f" "E", NULL}}, /* ß has no single-rune upper case */
    {"dotted I, dotless i, Kelvin, titlecase DZ",
     {{.action = "lowercase", .src = {"a"}, .target = "l"}, {.action = "uppercase", .src = {"a"}, .target = "u"}},
     {"a", "\xc4\xb0\xc4\xb1\xe2\x84\xaa\xc7\x85", NULL},
     {"a", "\xc4\xb0\xc4\xb1\xe2\x84\xaa\xc7\x85", "l", "i\xc4\xb1k\xc7\x86", "u", "\xc4\xb0I\xe2\x84\xaa\xc7\x84",
      NULL}},
    {"Greek final sigma maps one rune at a time",
     {{.action = "lowercase", .src = {"a"}, .target = "l"}},
     {"a", "\xce\xa3\xce\x91\xce\xa3", NULL},
     {"a", "\xce\xa3\xce\x91\xce\xa3", "l", "\xcf\x83\xce\xb1\xcf\x83", NULL}},
    {"invalid bytes become U+FFFD",
     {{.action = "lowercase", .src = {"a"}, .target = "l"}},
     {"a", "A\xff" "B", NULL},
     {"a", "A\xff" "B", "l", "a\xef\xbf\xbd" "b", NULL}},
    {"joined sources with separator",
     {{.action = "uppercase", .src = {"a", "b"}, .sep = "-", .target = "u"}},
     {"a", "x", "b", "y", NULL},
     {"a", "x", "b", "y", "u", "X-Y", NULL}},
    {"empty result deletes the target",
     {{.action = "lowercase", .src = {"nope"}, .target = "l"}},
     {"l", "old", NULL},
     {NULL}},
};

MG_TEST(lowercase_uppercase) { RUN_ALL(case_cases); }

/* ---- compile-time checks ------------------------------------------------------ */

typedef struct ecase {
  rspec_t rules[3];
  const char *want; /* substring of the message; NULL: compiles */
} ecase_t;

static const ecase_t error_cases[] = {
    {{{.action = "hashmod", .src = {"a"}, .target = "t"}}, "rule 1 (hashmod): modulus: must be set"},
    {{{.action = "hashmod", .src = {"a"}, .target = "t", .modulus = 3, .line = 12}}, NULL},
    {{{.action = "hashmod", .src = {"a"}, .modulus = 3, .line = 12}}, "rule 1 (hashmod) at line 12: target_label: must be set"},
    {{{.action = "hashmod", .src = {"a"}, .target = "${1}", .modulus = 3}}, "target_label: \"${1}\" is not a valid label name"},
    {{{.src = {"a"}}}, "rule 1 (replace): target_label: must be set for replace"},
    {{{.target = "foo-bar"}}, "target_label: \"foo-bar\" is not a valid label name"},
    {{{.target = "0${3}"}}, "target_label: \"0${3}\" is not a valid label name"},
    {{{.target = "-${3}"}}, "target_label: \"-${3}\" is not a valid label name"},
    {{{.target = "${3}"}}, NULL},
    {{{.target = "a${1}b$2_${x}"}}, NULL},
    {{{.target = "foo${"}}, "is not a valid label name"},
    {{{.target = "$"}}, "is not a valid label name"},
    {{{.target = "${}"}}, "is not a valid label name"},
    {{{.target = "bar.foo${1}bar"}}, "is not a valid label name"},
    {{{.target = "1abc"}}, "is not a valid label name"},
    {{{.action = "lowercase", .src = {"a"}}}, "target_label: must be set for lowercase"},
    {{{.action = "lowercase", .target = "${3}"}}, "rule 1 (lowercase): target_label: \"${3}\" is not a valid label name"},
    {{{.action = "uppercase", .target = "u", .repl = "x"}}, "rule 1 (uppercase): replacement: cannot be set for uppercase"},
    {{{.action = "uppercase", .target = "u", .repl = "$1"}}, NULL},
    {{{.action = "labelmap", .repl = "x-$1"}}, "rule 1 (labelmap): replacement: \"x-$1\" is not a valid label name"},
    {{{.action = "labelmap", .repl = "${1}_x"}}, NULL},
    {{{.action = "keepequal", .src = {"a"}}}, "target_label: must be set for keepequal"},
    {{{.action = "keepequal", .src = {"a"}, .target = "b", .regex = "(.*)"}}, "only source_labels and target_label may be set (regex is set)"},
    {{{.action = "dropequal", .src = {"a"}, .target = "b", .sep = ","}}, "(separator is set)"},
    {{{.action = "dropequal", .src = {"a"}, .target = "b", .modulus = 2}}, "(modulus is set)"},
    {{{.action = "dropequal", .src = {"a"}, .target = "b", .repl = "x"}}, "replacement: cannot be set for dropequal"},
    {{{.action = "dropequal", .src = {"a"}, .target = "b", .sep = ";", .repl = "$1"}}, NULL},
    {{{.action = "labeldrop", .src = {"a"}, .regex = "x"}}, "rule 1 (labeldrop): only regex may be set (source_labels is set)"},
    {{{.action = "labelkeep", .target = "t"}}, "(target_label is set)"},
    {{{.action = "labelkeep", .repl = "x"}}, "(replacement is set)"},
    {{{.action = "labelkeep", .sep = ","}}, "(separator is set)"},
    {{{.action = "labelkeep", .regex = "x", .sep = ";", .repl = "$1"}}, NULL},
    {{{.action = "foo"}}, "rule 1 (foo): action: unknown relabel action \"foo\""},
    {{{.action = ""}}, "unknown relabel action \"\""},
    {{{.src = {"a-b"}, .target = "t"}}, "source_labels: \"a-b\" is not a valid label name"},
    {{{.target = "t"}, {.target = "t"}, {.action = "hashmod", .target = "t"}}, "rule 3 (hashmod): modulus"},
    /* regexes: Go's messages, RE2 hints for PCRE-only syntax */
    {{{.action = "keep", .regex = "("}}, "regex: missing closing )"},
    {{{.action = "keep", .regex = "a))"}}, "regex: unexpected )"},
    {{{.action = "keep", .regex = "(a)\\1"}}, "invalid escape sequence: `\\1` (backreferences are not supported"},
    {{{.action = "keep", .regex = "\\k<a>"}}, "backreferences are not supported"},
    {{{.action = "keep", .regex = "a(?=b)"}}, "invalid or unsupported Perl syntax: `(?=`"},
    {{{.action = "keep", .regex = "a(?!b)"}}, "Prometheus regexes are RE2"},
    {{{.action = "keep", .regex = "(?<=a)b"}}, "invalid named capture"},
    {{{.action = "keep", .regex = "(?>a)"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "(?#c)"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "(?P=n)"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "a**"}}, "invalid nested repetition operator"},
    {{{.action = "keep", .regex = "a++"}}, "invalid nested repetition operator"},
    {{{.action = "keep", .regex = "a{2}{3}"}}, "invalid nested repetition operator"},
    {{{.action = "keep", .regex = "a*??"}}, "invalid nested repetition operator"},
    {{{.action = "keep", .regex = "*"}}, "missing argument to repetition operator"},
    {{{.action = "keep", .regex = "a|*"}}, "missing argument to repetition operator"},
    {{{.action = "keep", .regex = "(*)"}}, "missing argument to repetition operator"},
    {{{.action = "keep", .regex = "{2}"}}, "missing argument to repetition operator"},
    {{{.action = "keep", .regex = "a{1001}"}}, "invalid repeat count"},
    {{{.action = "keep", .regex = "a{2,1}"}}, "invalid repeat count"},
    {{{.action = "keep", .regex = "(a{2}){501}"}}, "invalid repeat count"},
    {{{.action = "keep", .regex = "((a{3}){1}){334}"}}, "invalid repeat count"},
    {{{.action = "keep", .regex = "((a{3}){1}){333}"}}, NULL},
    {{{.action = "keep", .regex = "(a{1000}){0}"}}, NULL},
    {{{.action = "keep", .regex = "(a{1000}){0}{2}"}}, "invalid nested repetition operator"},
    {{{.action = "keep", .regex = "(?:(a{1000}){0}){2}"}}, NULL},
    {{{.action = "keep", .regex = "[z-a]"}}, "invalid character class range: `z-a`"},
    {{{.action = "keep", .regex = "[a"}}, "missing closing ]"},
    {{{.action = "keep", .regex = "[]"}}, "missing closing ]"},
    {{{.action = "keep", .regex = "\\p{Foo}"}}, "invalid character class range: `\\p{Foo}`"},
    {{{.action = "keep", .regex = "\\p{greek}"}}, "invalid character class range"},
    {{{.action = "keep", .regex = "\\p{Letter}"}}, "invalid character class range"},
    {{{.action = "keep", .regex = "[[:foo:]]"}}, "invalid character class range: `[:foo:]`"},
    {{{.action = "keep", .regex = "\\Z"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "\\C"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "\\8"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "\\e"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "\\x{110000}"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "\\xg0"}}, "invalid escape sequence"},
    {{{.action = "keep", .regex = "[\\b]"}}, "invalid escape sequence"},
    /* Go parses the wrapped ^(?s:REGEX)$: \Q or \ at the end eat its ")" */
    {{{.action = "keep", .regex = "a\\"}}, "missing closing )"},
    {{{.action = "keep", .regex = "\\Qa*"}}, "missing closing )"},
    {{{.action = "keep", .regex = "\\Qa*\\E"}}, NULL},
    {{{.action = "keep", .regex = "(?P<>a)"}}, "invalid named capture"},
    {{{.action = "keep", .regex = "(?P<a-b>a)"}}, "invalid named capture"},
    {{{.action = "keep", .regex = "(?P<1a>a)"}}, NULL}, /* Go allows digits first */
    {{{.action = "keep", .regex = "(?-)"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "(?i-)"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "(?x)a"}}, "invalid or unsupported Perl syntax"},
    {{{.action = "keep", .regex = "(?i-s:a)(?)"}}, NULL},
    {{{.action = "keep", .regex = "(?i)\\p{Lu}"}}, "case-insensitive Unicode class not supported"},
    {{{.action = "keep", .regex = "(?i)[\\P{Greek}]"}}, "case-insensitive Unicode class not supported"},
    {{{.action = "keep", .regex = "\\p{Lu}(?i)\\p{Han}"}}, NULL},
    {{{.action = "keep", .regex = "a\xff"}}, "invalid UTF-8"},
    /* regexes are checked even where the action ignores them */
    {{{.action = "hashmod", .target = "t", .modulus = 2, .regex = "("}}, "rule 1 (hashmod): regex: missing closing )"},
};

MG_TEST(compile_errors) {
  for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++) {
    const ecase_t *e = &error_cases[i];
    rules_t b;
    build(&b, e->rules);
    mg_relabel_t *r = NULL;
    char err[512];
    int rc = mg_relabel_compile(&b.rs, &r, err, sizeof err);
    if (!e->want) {
      if (rc) MG_FAIL_("case %zu: want success, got %s", i, err);
    } else if (rc != MG_ECONFIG || !strstr(err, e->want)) {
      MG_FAIL_("case %zu: rc=%s err=\"%s\", want \"%s\"", i, mg_err_name(rc), err, e->want);
    } else if (r) {
      MG_FAIL_("case %zu: *out set on error", i);
    }
    mg_relabel_free(r);
  }
}

/* Nesting: Go refuses a parse tree taller than 1000; with the wrapper and
 * the top-level concatenation that is 999 nested groups. Deep nesting
 * compiles and matches (PCRE2's own limit of 250 is raised). */
MG_TEST(deep_nesting) {
  static char re[2 * 1000 + 2];
  for (int depth = 998; depth <= 999; depth++) {
    memset(re, 0, sizeof re);
    memset(re, '(', (size_t)depth);
    re[depth] = 'a';
    memset(re + depth + 1, ')', (size_t)depth);
    rspec_t spec[2] = {{.action = "keep", .src = {"x"}, .regex = re}};
    rules_t b;
    build(&b, spec);
    mg_relabel_t *r = NULL;
    char err[512];
    int rc = mg_relabel_compile(&b.rs, &r, err, sizeof err);
    if (depth == 999) {
      CHECK_INT(rc, MG_ECONFIG);
      CHECK(strstr(err, "expression nests too deeply") != NULL);
      continue;
    }
    REQUIRE(rc == 0);
    mg_labels_t ls;
    REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
    mg_labels_set(&ls, MG_STR_LIT("x"), MG_STR_LIT("a"));
    bool keep = false;
    CHECK_INT(mg_relabel_apply(r, &ls, &keep), 0);
    CHECK(keep);
    mg_labels_cleanup(&ls);
    mg_relabel_free(r);
  }
}

MG_TEST(compile_misc) {
  mg_relabel_t *r = (mg_relabel_t *)1;
  CHECK_INT(mg_relabel_compile(NULL, &r, NULL, 0), 0);
  REQUIRE(r != NULL);
  mg_labels_t ls;
  REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
  mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("1"));
  bool keep = false;
  CHECK_INT(mg_relabel_apply(r, &ls, &keep), 0);
  CHECK(keep);
  CHECK_INT(ls.n, 1);
  keep = false;
  CHECK_INT(mg_relabel_apply(NULL, &ls, &keep), 0);
  CHECK(keep);
  mg_relabel_free(r);
  mg_relabel_free(NULL);
  /* A long message is cut, not overrun. */
  rspec_t spec[2] = {{.action = "keep", .regex = "("}};
  rules_t b;
  build(&b, spec);
  char small[16];
  memset(small, 'x', sizeof small);
  CHECK_INT(mg_relabel_compile(&b.rs, &r, small, sizeof small), MG_ECONFIG);
  CHECK(memchr(small, 0, sizeof small) != NULL);
  mg_labels_cleanup(&ls);
}

/* ---- builder ---------------------------------------------------------------- */

MG_TEST(builder) {
  mg_labels_t ls;
  REQUIRE(mg_labels_init(&ls, 4, 16) == 0);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("b"), MG_STR_LIT("2")), 0);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("1")), 0);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("c"), MG_STR_LIT("3")), 0);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("B"), MG_STR_LIT("0")), 0);
  REQUIRE(ls.n == 4);
  CHECK_MEM(ls.v[0].name.p, ls.v[0].name.n, "B", 1); /* byte order */
  CHECK_MEM(ls.v[1].name.p, ls.v[1].name.n, "a", 1);
  CHECK_MEM(ls.v[3].name.p, ls.v[3].name.n, "c", 1);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("d"), MG_STR_LIT("4")), MG_ETOOBIG);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("x")), 0); /* replacing needs no room */
  mg_str_t v = mg_labels_get(&ls, MG_STR_LIT("a"));
  CHECK_MEM(v.p, v.n, "x", 1);
  CHECK_INT(mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("")), 0); /* "" deletes */
  CHECK_INT(ls.n, 3);
  v = mg_labels_get(&ls, MG_STR_LIT("a"));
  CHECK(v.n == 0 && v.p != NULL);
  mg_labels_del(&ls, MG_STR_LIT("B"));
  mg_labels_del(&ls, MG_STR_LIT("nope"));
  CHECK_INT(ls.n, 2);
  char buf[8] = "volatile";
  CHECK_INT(mg_labels_set_copy(&ls, mg_str_n(buf, 3), mg_str_n(buf, 8)), 0);
  memset(buf, '-', sizeof buf);
  v = mg_labels_get(&ls, MG_STR_LIT("vol"));
  CHECK_MEM(v.p, v.n, "volatile", 8);
  /* 16 bytes between resets: 8 value + 3 name used, 8 more do not fit */
  CHECK_INT(mg_labels_set_copy(&ls, MG_STR_LIT("e"), MG_STR_LIT("12345678")), MG_ETOOBIG);
  mg_labels_reset(&ls);
  CHECK_INT(ls.n, 0);
  CHECK_INT(mg_labels_set_copy(&ls, MG_STR_LIT("e"), MG_STR_LIT("12345678")), 0);
  mg_labels_cleanup(&ls);
  mg_labels_cleanup(&ls); /* twice is fine */
}

MG_TEST(apply_bounds) {
  /* labelmap doubling the set hits max_labels */
  rspec_t spec[2] = {{.action = "labelmap", .regex = "(.*)", .repl = "x_$1"}};
  rules_t b;
  build(&b, spec);
  mg_relabel_t *r;
  char err[256];
  REQUIRE(mg_relabel_compile(&b.rs, &r, err, sizeof err) == 0);
  mg_labels_t ls;
  REQUIRE(mg_labels_init(&ls, 3, 0) == 0);
  mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("1"));
  mg_labels_set(&ls, MG_STR_LIT("b"), MG_STR_LIT("2"));
  bool keep = true;
  CHECK_INT(mg_relabel_apply(r, &ls, &keep), MG_ETOOBIG);
  CHECK(!keep);
  mg_labels_cleanup(&ls);
  mg_relabel_free(r);

  /* Catastrophic backtracking (Go would answer in linear time) ends in
   * PCRE2's match limit: reported, not hung. */
  rspec_t spec2[2] = {{.action = "keep", .src = {"a"}, .regex = "(a|aa)*[bc]"}};
  build(&b, spec2);
  REQUIRE(mg_relabel_compile(&b.rs, &r, err, sizeof err) == 0);
  REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
  char val[100];
  memset(val, 'a', sizeof val);
  mg_labels_set(&ls, MG_STR_LIT("a"), mg_str_n(val, sizeof val));
  CHECK_INT(mg_relabel_apply(r, &ls, &keep), MG_ETOOBIG);
  CHECK(!keep);
  mg_labels_cleanup(&ls);
  mg_relabel_free(r);
}

MG_TEST(no_allocation_in_steady_state) {
  rspec_t spec[MAXR] = {
      {.src = {"__address__"}, .regex = "([^:]+):(\\d+)", .target = "host", .repl = "h-$1"},
      {.action = "labelmap", .regex = "__meta_(.+)", .repl = "m_${1}"},
      {.action = "hashmod", .src = {"__address__", "job"}, .target = "shard", .modulus = 16},
      {.action = "uppercase", .src = {"job"}, .target = "JOB"},
      {.action = "labeldrop", .regex = "__meta_.*"},
      {.action = "keep", .src = {"bad"}, .regex = ".*\\x{fffd}.*"},
  };
  rules_t b;
  build(&b, spec);
  mg_relabel_t *r;
  char err[256];
  REQUIRE(mg_relabel_compile(&b.rs, &r, err, sizeof err) == 0);
  mg_labels_t ls;
  REQUIRE(mg_labels_init(&ls, 0, 0) == 0);
  uint64_t before = 0;
  for (int round = 0; round < 50; round++) {
    if (round == 5) before = mg_mem_alloc_count();
    mg_labels_reset(&ls);
    mg_labels_set(&ls, MG_STR_LIT("__address__"), MG_STR_LIT("10.1.2.3:9100"));
    mg_labels_set(&ls, MG_STR_LIT("__meta_zone"), MG_STR_LIT("eu-west-1a"));
    mg_labels_set(&ls, MG_STR_LIT("__meta_pod"), MG_STR_LIT("web-0"));
    mg_labels_set(&ls, MG_STR_LIT("job"), MG_STR_LIT("node"));
    mg_labels_set_copy(&ls, MG_STR_LIT("bad"), MG_STR_LIT("x\xffy")); /* takes the transcoding path */
    bool keep;
    CHECK_INT(mg_relabel_apply(r, &ls, &keep), 0);
    CHECK(keep);
  }
  CHECK_U64(mg_mem_alloc_count() - before, 0);
  mg_str_t v = mg_labels_get(&ls, MG_STR_LIT("host"));
  CHECK_MEM(v.p, v.n, "h-10.1.2.3", 10);
  v = mg_labels_get(&ls, MG_STR_LIT("m_zone"));
  CHECK_MEM(v.p, v.n, "eu-west-1a", 10);
  CHECK_INT(mg_labels_get(&ls, MG_STR_LIT("__meta_pod")).n, 0);
  mg_labels_cleanup(&ls);
  mg_relabel_free(r);
}

/* Every allocation in compile and in a first apply may fail: the result is
 * MG_ENOMEM, never a crash or a leak (run under ASan). */
MG_TEST(allocation_failures) {
  rspec_t spec[MAXR] = {
      {.src = {"a", "b"}, .regex = "(?P<x>[^;]+);(.*)", .target = "t_${x}", .repl = "$2$$"},
      {.action = "labelmap", .regex = "(?i)(a|b)", .repl = "m_$1"},
      {.action = "lowercase", .src = {"a"}, .target = "l"},
      {.action = "hashmod", .src = {"a"}, .target = "h", .modulus = 5},
      {.action = "labelkeep", .regex = "[\\w&&[^q]]*|\\p{Greek}|[[:alpha:]]"},
  };
  rules_t b;
  build(&b, spec);
  int failures = 0;
  for (uint64_t nth = 1; nth < 400; nth++) {
    mg_relabel_t *r = NULL;
    char err[256];
    mg_mem_fail_at(nth);
    int rc = mg_relabel_compile(&b.rs, &r, err, sizeof err);
    if (rc == 0) {
      mg_labels_t ls;
      rc = mg_labels_init(&ls, 0, 0);
      if (rc == 0) {
        bool keep;
        mg_labels_set(&ls, MG_STR_LIT("a"), MG_STR_LIT("x\xff"));
        mg_labels_set(&ls, MG_STR_LIT("b"), MG_STR_LIT("y"));
        rc = mg_relabel_apply(r, &ls, &keep);
        mg_labels_cleanup(&ls);
      }
      mg_relabel_free(r);
    }
    mg_mem_fail_at(0);
    if (rc) {
      CHECK_INT(rc, MG_ENOMEM);
      failures++;
    } else {
      break; /* past the last allocation */
    }
  }
  CHECK(failures > 10);
}

MG_TEST_MAIN()
