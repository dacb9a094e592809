"""mg_sigv4 against botocore's SigV4Auth, an independent implementation, on
randomised requests: the C signer runs inside the unit-test binary
(test_sigv4's "oracle" test, fed through MG_SIGV4_ORACLE_IN/OUT) and both
Authorization headers and canonical requests must be equal, byte for byte.

Inputs stay where botocore and AWS's published suite agree. botocore differs
from the suite (which mg_sigv4 follows) in these ways, so they are not
generated:
- the query: botocore signs the URL's query string as given, without
  decoding and re-encoding it (the suite's get-vanilla-utf8-query expects
  raw UTF-8 to be encoded), and signs an empty piece ("a&&b") as a
  parameter "=" that mg_sigv4 ignores. botocore gets the query in canonical
  form; the C side gets that form, or (alt-encoded requests) an equivalent
  wire form with lower-case or needless %XX escapes and raw UTF-8, which it
  must canonicalise to the same string;
- paths not starting with '/' cannot reach botocore's signer (it takes the
  path from a URL); its normalize_url_path would keep them relative where
  the suite's signer and mg_sigv4 add the leading '/';
- whitespace in header values: botocore's str.split() also folds Unicode
  and \\v \\f \\x1c-\\x1f spaces; the spec (and mg_sigv4) fold spaces, tabs
  and line breaks only. Values use spaces and tabs; line breaks (obs-fold)
  are covered by the suite's get-header-value-multiline;
- headers botocore never signs (User-Agent, Expect, hop-by-hop, X-Amzn-
  Trace-Id) or rewrites (Date): mg_sigv4 signs exactly what it is given;
- methods: botocore upper-cases them, mg_sigv4 signs them as given.

Environment: MG_BUILD_DIR (test_sigv4 is looked up there), optional
MG_SIGV4_ORACLE_N (default 2000) and MG_SIGV4_ORACLE_SEED. Prints figures
and ends with "N passed, M failed". Test credentials are random; neither
secrets nor tokens are printed.
"""
import datetime
import hashlib
import os
import random
import subprocess
import sys
import tempfile
from urllib.parse import quote, urlsplit

try:
    import botocore
    import botocore.auth
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:  # pragma: no cover - environment without python3-botocore
    print("skipped: botocore not importable")
    print("0 passed, 0 failed")
    sys.exit(0)

N = int(os.environ.get("MG_SIGV4_ORACLE_N", "2000"))
SEED = int(os.environ.get("MG_SIGV4_ORACLE_SEED", str(random.SystemRandom().randrange(1 << 32))))
SRC = os.environ.get("MG_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("MG_BUILD_DIR", os.path.join(SRC, "build"))
BIN = os.path.join(BUILD, "test_sigv4")

passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}" + (f": {detail}" if detail else ""))


# ---- botocore with a frozen clock ------------------------------------------

_now = [datetime.datetime(2015, 8, 30, 12, 36, 0)]


def _frozen(*_args, **_kwargs):
    return _now[0]


if hasattr(botocore.auth, "get_current_datetime"):
    botocore.auth.get_current_datetime = _frozen
else:  # older botocore: datetime.datetime.utcnow() inside botocore.auth
    class _FrozenDatetime(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return _now[0]

    class _DatetimeModule:
        datetime = _FrozenDatetime

        def __getattr__(self, name):
            return getattr(datetime, name)

    botocore.auth.datetime = _DatetimeModule()


class RecordingSigV4(SigV4Auth):
    def canonical_request(self, request):
        self.creq = super().canonical_request(request)
        return self.creq


def boto_sign(req):
    _now[0] = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=req["time"])
    url = "https://" + req["host"] + req["path"] + ("" if req["query"] is None else "?" + req["query"])
    r = AWSRequest(method=req["method"], url=url, data=req["body"])
    for name, value in req["headers"]:
        r.headers[name] = value  # HTTPMessage appends: repeated names stay
    if req["unsigned"]:
        r.context["payload_signing_enabled"] = False
    elif req["flags"] & 1:
        r.headers["X-Amz-Content-SHA256"] = hashlib.sha256(req["body"]).hexdigest()
    creds = Credentials(req["akid"], req["secret"], req["token"])
    auth = RecordingSigV4(creds, req["service"], req["region"])
    auth.add_auth(r)
    return r.headers["Authorization"], auth.creq


# ---- random requests ---------------------------------------------------------

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
SUBDELIMS = "!$&'()*+,;=:@"
UNICODE = ["é", "ü", "ß", "ሴ", "中", "Ω", "😀", "\u00e5"]  # none is whitespace
TCHAR = UNRESERVED + "!#$%&'*+^`|"
BLACKLIST = {"connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
             "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
             "authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256",
             "date", "host"}
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "cn-north-1",
           "us-gov-west-1", "sa-east-1"]
SERVICES = ["aps", "sts", "ec2", "service", "execute-api", "monitoring"]
HOSTS = ["aps-workspaces.us-west-2.amazonaws.com", "sts.amazonaws.com", "ec2.eu-west-1.amazonaws.com",
         "localhost:8443", "127.0.0.1:9090", "Example.AmazonAWS.com"]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
EDGE_TIMES = [0, 86399, 86400, 951782400, 951868799, 1440938160, 2147483647, 2147483648,
              4102444799, 4107542400]


def rand_text(rng, alphabet_parts, lo, hi):
    return "".join(rng.choice(rng.choice(alphabet_parts)) for _ in range(rng.randint(lo, hi)))


def rand_segment(rng):
    k = rng.random()
    if k < 0.08:
        return ""
    if k < 0.16:
        return "."
    if k < 0.24:
        return ".."
    parts = [UNRESERVED, UNRESERVED, SUBDELIMS, UNICODE, [" "], ["%20", "%2F", "%e1%88%b4", "%41", "%", "%zz", "%2"]]
    return rand_text(rng, parts, 1, 12)


def rand_path(rng):
    if rng.random() < 0.04:
        return ""
    segs = [rand_segment(rng) for _ in range(rng.randint(0, 8))]
    path = "/" + "/".join(segs)
    if rng.random() < 0.3:
        path += "/"
    return path


def enc(s):
    return quote(s, safe="-_.~")


def alt_encode(rng, s):
    """An equivalent wire form of the raw string s: each character either
    raw (when that is unambiguous in a query) or %XX in either case."""
    out = []
    for ch in s:
        raw_ok = ch in UNRESERVED or ch in UNICODE or ch in "!$'()*,;:@/?"
        if raw_ok and rng.random() < 0.5:
            out.append(ch)
        else:
            hx = "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
            out.append(hx.lower() if rng.random() < 0.5 else hx)
    return "".join(out)


def rand_query(rng):
    k = rng.random()
    if k < 0.3:
        return None, None
    if k < 0.35:
        return "", ""
    parts = [UNRESERVED, UNRESERVED, SUBDELIMS, UNICODE, [" ", "+", "%", "/", "?", "="]]
    names, pairs = [], []
    for _ in range(rng.randint(1, 8)):
        if names and rng.random() < 0.3:
            name = rng.choice(names)  # repeated key
        else:
            name = "" if rng.random() < 0.03 else rand_text(rng, parts, 1, 10)
            names.append(name)
        # A valueless empty name would be an empty piece (see above).
        value = None if name and rng.random() < 0.1 else rand_text(rng, parts, 0, 12)
        pairs.append((name, value))
    rng.shuffle(pairs)

    def join(e):
        return "&".join(e(n) if v is None else e(n) + "=" + e(v) for n, v in pairs)

    canonical = join(enc)
    wire = join(lambda s: alt_encode(rng, s)) if rng.random() < 0.3 else canonical
    return canonical, wire


def rand_value(rng):
    ws = [" ", "\t", "  ", " \t "]
    parts = [[chr(c) for c in range(0x21, 0x7F)], UNICODE, ['"']]
    words = [rand_text(rng, parts, 1, 10) for _ in range(rng.randint(0, 4))]
    v = "".join(w + rng.choice(ws) for w in words[:-1]) + (words[-1] if words else "")
    if rng.random() < 0.3:
        v = rng.choice(ws) + v
    if rng.random() < 0.3:
        v = v + rng.choice(ws)
    return v


def rand_headers(rng):
    host = rng.choice(HOSTS)
    hs = [(rng.choice(["Host", "host", "HOST"]), host)]
    names = []
    for _ in range(rng.randint(0, 12)):
        if names and rng.random() < 0.25:
            name = rng.choice(names)
            name = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)
        else:
            name = rand_text(rng, [TCHAR], 1, 16)
            if name.lower() in BLACKLIST:
                continue
            names.append(name)
        hs.append((name, rand_value(rng)))
    rng.shuffle(hs)
    return host, hs


def rand_body(rng):
    k = rng.random()
    if k < 0.25:
        return b""
    if k < 0.85:
        return rng.randbytes(rng.randint(1, 200))
    if k < 0.99:
        return rng.randbytes(rng.randint(1000, 70000))
    return rng.randbytes(rng.randint(1 << 20, 2 << 20))


def rand_request(rng, i):
    while True:
        path = rand_path(rng)
        query, wire_query = rand_query(rng)
        host, headers = rand_headers(rng)
        url = "https://" + host + path + ("" if query is None else "?" + query)
        parts = urlsplit(url)
        # Keep what urlsplit hands botocore identical to what C signs.
        if parts.path == path and parts.query == (query or "") and "#" not in url:
            break
    body = rand_body(rng)
    unsigned = rng.random() < 0.05
    flags = 1 if unsigned or rng.random() < 0.4 else 0
    token = None
    if rng.random() < 0.5:
        token = "".join(rng.choice(B64) for _ in range(rng.randint(16, 900))) + rng.choice(["", "=", "=="])
    t = EDGE_TIMES[i] if i < len(EDGE_TIMES) else rng.randint(0, 4102444800)
    return {
        "method": rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "X-CUSTOM"]),
        "host": host, "path": path, "query": query, "wire_query": wire_query,
        "headers": headers, "body": body, "unsigned": unsigned, "flags": flags,
        "precomputed": unsigned or rng.random() < 0.2,
        "akid": rng.choice(["AKIA", "ASIA"]) + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "secret": "".join(rng.choice(B64) for _ in range(40)),
        "token": token,
        "region": rng.choice(REGIONS), "service": rng.choice(SERVICES), "time": t,
    }


# ---- the C side ----------------------------------------------------------------

def hx(s):
    """A field for the C driver: hex bytes, "-" for None, "=" for empty."""
    if s is None:
        return "-"
    if isinstance(s, str):
        s = s.encode("utf-8")
    return s.hex() if s else "="


def c_block(req):
    if req["unsigned"]:
        mode, payload = "P", b"UNSIGNED-PAYLOAD"
    elif req["precomputed"]:
        mode, payload = "P", hashlib.sha256(req["body"]).hexdigest().encode()
    else:
        mode, payload = "B", req["body"]
    fields = [hx(req["method"]), hx(req["path"]), hx(req["wire_query"]), req["region"], req["service"],
              str(req["time"]), str(req["flags"]), hx(req["akid"]), hx(req["secret"]), hx(req["token"]),
              mode, hx(payload)]
    lines = ["R " + " ".join(fields)]
    for name, value in req["headers"]:
        lines.append(f"H {hx(name)} {hx(value)}")
    lines.append("E")
    return "\n".join(lines) + "\n"


def run_c(reqs):
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(fin, "w") as f:
            for r in reqs:
                f.write(c_block(r))
        env = dict(os.environ, MG_SIGV4_ORACLE_IN=fin, MG_SIGV4_ORACLE_OUT=fout)
        p = subprocess.run([BIN, "oracle"], env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            print(p.stdout[-2000:], p.stderr[-2000:])
            return None
        with open(fout) as f:
            return [line.rstrip("\n").split("\t") for line in f]


def redact(text, token):
    return text.replace(token, "<session token>") if token else text


def main():
    print(f"botocore {botocore.__version__}, seed {SEED}, {N} requests, binary {BIN}")
    if not os.access(BIN, os.X_OK):
        check(False, "test_sigv4 binary present", BIN)
        print(f"{passed} passed, {failed} failed")
        return 1
    rng = random.Random(SEED)
    reqs = [rand_request(rng, i) for i in range(N)]
    boto = [boto_sign(r) for r in reqs]
    out = run_c(reqs)
    check(out is not None and len(out) == N, "C signer answered every request",
          "no output" if out is None else f"{len(out)} answers")
    if out is None or len(out) != N:
        print(f"{passed} passed, {failed} failed")
        return 1

    auth_diff, creq_diff, errors = [], [], []
    for i, (r, (b_auth, b_creq), o) in enumerate(zip(reqs, boto, out)):
        if o[0] != "OK":
            errors.append((i, o[1] if len(o) > 1 else "?"))
            continue
        c_auth, c_debug = o[1], bytes.fromhex(o[2]).decode("utf-8")
        c_creq = c_debug.split("\n\nAWS4-HMAC-SHA256\n")[0]
        if c_auth != b_auth:
            auth_diff.append(i)
        if c_creq != redact(b_creq, r["token"]):
            creq_diff.append((i, c_creq, redact(b_creq, r["token"])))
    check(not errors, f"C signed all {N} requests", f"errors: {errors[:5]}")
    check(not auth_diff, f"Authorization equal to botocore's for {N - len(auth_diff) - len(errors)}/{N} requests",
          f"differ: {auth_diff[:10]}")
    check(not creq_diff, f"canonical request equal to botocore's for {N - len(creq_diff) - len(errors)}/{N}",
          f"differ: {[d[0] for d in creq_diff[:10]]}")
    for i, c_creq, b_creq in creq_diff[:3]:
        print(f"--- request {i}: C canonical request\n{c_creq}\n--- botocore\n{b_creq}")

    # The generator must have reached every feature it is meant to test.
    cover = {
        "session token": sum(1 for r in reqs if r["token"]),
        "x-amz-content-sha256": sum(1 for r in reqs if r["flags"] & 1),
        "UNSIGNED-PAYLOAD": sum(1 for r in reqs if r["unsigned"]),
        "precomputed payload hash": sum(1 for r in reqs if r["precomputed"]),
        "body >= 1 MiB": sum(1 for r in reqs if len(r["body"]) >= 1 << 20),
        "empty body": sum(1 for r in reqs if not r["body"]),
        "dot segments": sum(1 for r in reqs if "/./" in r["path"] + "/" or "/../" in r["path"] + "/"),
        "repeated slashes": sum(1 for r in reqs if "//" in r["path"]),
        "percent in path": sum(1 for r in reqs if "%" in r["path"]),
        "non-ASCII path": sum(1 for r in reqs if any(ord(c) > 127 for c in r["path"])),
        "alt-encoded query": sum(1 for r in reqs if r["query"] != r["wire_query"]),
        "repeated query key": sum(1 for r in reqs if r["query"] and len({p.split("=")[0] for p in r["query"].split("&")}) < r["query"].count("&") + 1),
        "valueless query key": sum(1 for r in reqs if r["query"] and any("=" not in p for p in r["query"].split("&"))),
        "repeated header": sum(1 for r in reqs if len({n.lower() for n, _ in r["headers"]}) < len(r["headers"])),
        "header whitespace runs": sum(1 for r in reqs if any("  " in v or "\t" in v for _, v in r["headers"])),
        "edge times": min(N, len(EDGE_TIMES)),
    }
    print("coverage: " + ", ".join(f"{k} {v}" for k, v in cover.items()))
    low = [k for k, v in cover.items() if v < (1 if k == "body >= 1 MiB" else 5)]
    check(N < 1000 or not low, "every feature generated", f"too few: {low}")

    # Control: the comparison can fail. A changed header value must change
    # the C signature (against botocore's signature of the original).
    r = dict(reqs[0])
    r["headers"] = r["headers"] + [("X-Control", "1")]
    ctl = run_c([r])
    check(ctl is not None and ctl[0][0] == "OK" and ctl[0][1] != boto[0][0],
          "control: an extra header changes the signature")

    # The documented disagreements, shown for information (not failures:
    # they are botocore's choices and may change).
    base = rand_request(random.Random(1), 99)
    base.update(path="/a", query=None, wire_query=None, headers=[("Host", "h")], token=None)
    for what, change in [("raw UTF-8 in query", dict(query="\u1234=bar", wire_query="\u1234=bar")),
                         ("empty query piece 'a=1&&b=2'", dict(query="a=1&&b=2", wire_query="a=1&&b=2"))]:
        r = dict(base, **change)
        try:
            b_auth, _ = boto_sign(r)
        except Exception as e:  # noqa: BLE001 - information only
            b_auth = f"error {type(e).__name__}"
        c = run_c([r])
        same = c is not None and c[0][0] == "OK" and c[0][1] == b_auth
        print(f"info: {what}: botocore {'agrees' if same else 'differs (as documented)'}")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
