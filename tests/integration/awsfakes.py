"""awsfakes: loopback fakes of the AWS endpoints moongate talks to, for
tests in C and Python. Standard library plus botocore (python3-botocore),
which recomputes every SigV4 signature independently of moongate.

Owns: one World (accounts, users, roles, issued keys, web identity tokens,
counters) shared by a fake STS (AssumeRole and GetCallerIdentity
SigV4-checked, AssumeRoleWithWebIdentity unsigned), a fake IMDSv2, a fake ECS/EKS container
credentials endpoint, a fake AMP workspace remote_write endpoint that
checks SigV4 like AWS (service "aps") and decodes snappy + protobuf, and a
fake EC2 Query API (DescribeInstances with filters and pagination,
DescribeAvailabilityZones; SigV4 service "ec2") for discovery.
Errors are the ones AWS sends (codes, messages, status, x-amzn-ErrorType).
Must not: bind anything but 127.0.0.1, print a secret key or token, or
block a request on another one (ThreadingHTTPServer).

Use from Python:

    world = World(region="us-east-1")
    fakes = Fakes(world)              # all servers, fakes.sts_url etc.
    ...
    fakes.stop()

or as a process (C tests): `python3 awsfakes.py serve` prints one line
`READY {json of URLs}` and serves until stdin closes; a control endpoint
(`/control/...`, JSON) adds users, roles and tokens, mints credentials,
changes behaviour and reports counters.
"""

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

try:
    import botocore.auth
    import botocore.awsrequest
    import botocore.compat
    import botocore.credentials
except ImportError:  # a python without Debian's dist-packages on its path
    sys.path.append("/usr/lib/python3/dist-packages")
    import botocore.auth
    import botocore.awsrequest
    import botocore.compat
    import botocore.credentials

import mgtest  # noqa: E402  (snappy + protobuf decoding)

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
SIG_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
TOKEN_EXPIRED = "The security token included in the request is expired"
TOKEN_INVALID = "The security token included in the request is invalid."
AMZ_FMT = "%Y%m%dT%H%M%SZ"


def _zone_prefix(region):
    """use1 for us-east-1, euw3 for eu-west-3: how zone ids begin."""
    short = {"northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw", "central": "c"}
    parts = region.split("-")
    if len(parts) < 3:
        return region
    return parts[0] + "".join(short.get(p, p[0]) for p in parts[1:-1]) + parts[-1]


def iso(t):
    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _alnum(n):
    abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "".join(secrets.choice(abc) for _ in range(n))


class Key:
    """One access key: long-term (AKIA, a user) or temporary (ASIA, a role
    session, with token and expiry)."""

    def __init__(self, akid, secret, token, expires, principal, account, role=None):
        self.akid = akid
        self.secret = secret
        self.token = token
        self.expires = expires      # epoch seconds or None
        self.principal = principal  # arn of the user or the assumed-role session
        self.account = account
        self.role = role            # role arn for sessions
        self.revoked = False

    def info(self):
        return {"access_key_id": self.akid, "principal": self.principal, "account": self.account,
                "role": self.role, "expires": self.expires, "temporary": self.token is not None}


class Role:
    def __init__(self, arn, external_id=None, trusted=None, max_duration=43200, issue_duration=None,
                 web_identity=False):
        self.arn = arn
        self.account = arn.split(":")[4]
        self.name = arn.rsplit("/", 1)[-1]
        self.external_id = external_id        # required ExternalId, or None
        self.trusted = trusted                # set of principal arns / account ids allowed, None = anyone
        self.max_duration = max_duration
        self.issue_duration = issue_duration  # force this lifetime whatever was asked (short test sessions)
        self.web_identity = web_identity


class World:
    """The shared state of all fakes. Thread-safe."""

    def __init__(self, region="us-east-1", min_duration=1):
        self.region = region
        self.min_duration = min_duration  # real STS: 900
        self.lock = threading.Lock()
        self.keys = {}
        self.roles = {}
        self.web_tokens = {}   # token -> {"subject", "expires"}
        self.counters = {}
        self.fail = {}         # endpoint -> list of (status, code, message) to answer next
        self.delay = {}        # endpoint -> seconds to sleep before answering
        self.clock_skew = 0    # seconds added to the fakes' notion of now
        # IMDS
        self.imds_role = None          # role arn of the instance profile (None: no role attached)
        self.imds_duration = 6 * 3600  # lifetime of instance credentials
        self.imds_refresh_before = 15 * 60  # serve the same credentials until this close to expiry
        self.imds_token_ttl_max = 21600
        self.imds_tokens = {}          # token -> expiry
        self.imds_current = None
        # ECS
        self.ecs_role = None
        self.ecs_duration = 6 * 3600
        self.ecs_auth = None           # required Authorization value, or None
        self.ecs_path = "/v2/credentials/" + str(uuid.uuid4())
        # AMP
        self.amp_allowed = None        # set of role arns / principals allowed to write, None: any valid key
        self.amp_samples = 0
        self.amp_requests_ok = 0
        self.amp_keys_used = {}        # akid -> count of accepted requests
        self.amp_rejections = []       # (code, akid) of refused requests
        # EC2 (discovery): instances as FakeEC2 describes them, zone name -> zone id
        self.ec2_instances = []
        self.ec2_zones = {f"{region}{s}": f"{_zone_prefix(region)}-az{i + 1}" for i, s in enumerate("abc")}
        self.ec2_page_size = None      # at most this many instances per page, whatever MaxResults says
        self.ec2_allowed = None        # principals / role arns allowed to describe, None: any valid key
        self.ec2_requests = []         # (action, form dict, akid) of every SigV4-valid request
        self.ec2_seq = 0               # instances ever added (ids stay unique after removals)
        self.ec2_rejections = []       # (code, akid) of refused requests

    def now(self):
        return time.time() + self.clock_skew

    def count(self, name, n=1):
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def take_fault(self, endpoint):
        with self.lock:
            lst = self.fail.get(endpoint)
            if lst:
                return lst.pop(0)
        return None

    def add_user(self, account="111111111111", name="moongate", akid=None, secret=None):
        akid = akid or "AKIA" + _alnum(16)
        secret = secret or base64.b64encode(os.urandom(30)).decode()
        k = Key(akid, secret, None, None, f"arn:aws:iam::{account}:user/{name}", account)
        with self.lock:
            self.keys[akid] = k
        return k

    def add_role(self, arn, **kw):
        r = Role(arn, **kw)
        with self.lock:
            self.roles[arn] = r
        return r

    def add_web_token(self, token=None, subject="system:serviceaccount:default:moongate", ttl=3600):
        token = token or "eyJ" + base64.urlsafe_b64encode(os.urandom(90)).decode().rstrip("=")
        with self.lock:
            self.web_tokens[token] = {"subject": subject, "expires": self.now() + ttl}
        return token

    def issue(self, role_arn, duration, session="moongate"):
        """Mint temporary credentials of a role session."""
        role = self.roles[role_arn]
        akid = "ASIA" + _alnum(16)
        secret = base64.b64encode(os.urandom(30)).decode()
        token = base64.b64encode(os.urandom(400)).decode()
        principal = f"arn:aws:sts::{role.account}:assumed-role/{role.name}/{session}"
        k = Key(akid, secret, token, self.now() + duration, principal, role.account, role_arn)
        with self.lock:
            self.keys[akid] = k
        return k

    def lookup(self, akid):
        with self.lock:
            return self.keys.get(akid)

    def add_instance(self, **kw):
        """An EC2 instance for FakeEC2. Keys (all optional): id, image, state,
        type, az, private_ip, private_dns, public_ip, public_dns, platform, vpc,
        subnet, arch, lifecycle, owner, reservation, tags {key: value},
        enis [{subnet, device_index, ipv6: [(address, primary)]}]."""
        with self.lock:
            self.ec2_seq += 1
            n = self.ec2_seq
        inst = {"id": f"i-{n:017x}", "image": "ami-0123456789abcdef0", "state": "running", "type": "t3.micro",
                "az": self.region + "a", "private_ip": f"10.0.{n // 250}.{n % 250 + 1}", "private_dns": None,
                "public_ip": None, "public_dns": None, "platform": None, "vpc": "vpc-0a1b2c3d", "subnet":
                "subnet-0a1b2c3d", "arch": "x86_64", "lifecycle": None, "owner": "111111111111",
                "reservation": f"r-{n:017x}", "tags": {}, "enis": None}
        inst.update(kw)
        if inst["private_ip"] and inst["private_dns"] is None:
            inst["private_dns"] = "ip-" + inst["private_ip"].replace(".", "-") + ".ec2.internal"
        if inst["enis"] is None and inst["vpc"]:
            inst["enis"] = [{"subnet": inst["subnet"], "device_index": 0, "ipv6": []}]
        with self.lock:
            self.ec2_instances.append(inst)
        return inst

    def remove_instance(self, instance_id):
        with self.lock:
            self.ec2_instances = [i for i in self.ec2_instances if i["id"] != instance_id]


# ---------------------------------------------------------------- SigV4 checking

class _Verifier(botocore.auth.SigV4Auth):
    """botocore's SigV4 with the headers and payload the request said it signed."""

    def __init__(self, creds, service, region, signed, headers, body):
        super().__init__(creds, service, region)
        self._signed = signed
        self._hdrs = headers
        self._body = body

    def headers_to_sign(self, request):
        hm = botocore.compat.HTTPHeaders()
        for name in self._signed:
            for n, v in self._hdrs:
                if n.lower() == name:
                    hm[name] = v
        return hm

    def payload(self, request):
        return hashlib.sha256(self._body).hexdigest()

    def canonical_request(self, request):
        cr = [request.method.upper(), self._normalize_url_path(urllib.parse.urlsplit(request.url).path),
              self.canonical_query_string(request)]
        hs = self.headers_to_sign(request)
        cr.append(self.canonical_headers(hs) + "\n")
        cr.append(self.signed_headers(hs))
        cr.append(self.payload(request))
        return "\n".join(cr)


class AuthError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
                      r"SignedHeaders=([a-z0-9;\-]+),\s*Signature=([0-9a-f]{64})$")


def verify_sigv4(world, method, raw_path, headers, body, service, region, codes):
    """Check a SigV4 header-signed request as AWS does. headers: list of
    (name, value). codes: the service's error codes: dict with keys missing,
    invalid, expired, mismatch. Returns the Key; raises AuthError."""
    h = {}
    for n, v in headers:
        h.setdefault(n.lower(), v)
    auth = h.get("authorization")
    if not auth:
        raise AuthError(403, codes["missing"], "Missing Authentication Token")
    m = _AUTH_RE.match(auth.strip())
    if not m:
        raise AuthError(403, codes["incomplete"], "Authorization header requires 'Credential', 'SignedHeaders' "
                        "and 'Signature' parameters.")
    akid, date, reg, svc, signed, sig = m.groups()
    signed = signed.split(";")
    amz_date = h.get("x-amz-date", "")
    try:
        t = datetime.datetime.strptime(amz_date, AMZ_FMT).replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        raise AuthError(403, codes["incomplete"], "Authorization header requires existence of either a "
                        "'X-Amz-Date' or a 'Date' header.")
    now = world.now()
    if abs(now - t) > 300:
        raise AuthError(403, codes["mismatch"], f"Signature expired: {amz_date} is now earlier than "
                        f"{datetime.datetime.fromtimestamp(now - 300, datetime.timezone.utc).strftime(AMZ_FMT)} "
                        f"({datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime(AMZ_FMT)} - 5 min.)")
    if date != amz_date[:8]:
        raise AuthError(403, codes["mismatch"], "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                        "version of date from HTTP")
    if reg != region:
        raise AuthError(403, codes["mismatch"], "Credential should be scoped to a valid region. ")
    if svc != service:
        raise AuthError(403, codes["mismatch"], f"Credential should be scoped to correct service: '{service}'. ")
    if "host" not in signed:
        raise AuthError(403, codes["mismatch"], "'Host' or ':authority' must be a 'SignedHeader' in the AWS "
                        "Authorization.")
    key = world.lookup(akid)
    if key is None or key.revoked:
        raise AuthError(403, codes["invalid"], TOKEN_INVALID)
    tok = h.get("x-amz-security-token")
    if key.token is not None:
        if tok != key.token:
            raise AuthError(403, codes["invalid"], TOKEN_INVALID)
        if now >= key.expires:  # AWS reads the token before it checks the signature
            raise AuthError(codes.get("expired_status", 403), codes["expired"], TOKEN_EXPIRED)
    elif tok is not None:
        raise AuthError(403, codes["invalid"], TOKEN_INVALID)
    for name in signed:
        if name not in h:
            raise AuthError(403, codes["mismatch"], SIG_MISMATCH)
    creds = botocore.credentials.Credentials(key.akid, key.secret, key.token)
    v = _Verifier(creds, service, region, signed, headers, body)
    path, _, query = raw_path.partition("?")
    req = botocore.awsrequest.AWSRequest(method=method, url="http://" + h.get("host", "localhost") + path,
                                         headers={}, data=body)
    if query:
        params = []
        for piece in query.split("&"):
            if not piece:
                continue
            k, _, val = piece.partition("=")
            params.append((urllib.parse.unquote(k), urllib.parse.unquote(val)))
        req.params = params
    req.context["timestamp"] = amz_date
    want = v.signature(v.string_to_sign(req, v.canonical_request(req)), req)
    if not hmac.compare_digest(want, sig):
        raise AuthError(403, codes["mismatch"], SIG_MISMATCH)
    return key


def snappy_compress(data):
    """Snappy block format: python3-snappy when importable, else a valid
    literal-only encoding (what a test client needs; the fakes decode either)."""
    try:
        import snappy
        return snappy.compress(data)
    except ImportError:
        pass
    out = bytearray()
    n = len(data)
    while True:  # uncompressed length, varint
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        ln = len(chunk) - 1
        if ln < 60:
            out.append(ln << 2)
        elif ln < 256:
            out += bytes([60 << 2, ln])
        else:
            out += bytes([61 << 2, ln & 0xFF, ln >> 8])
        out += chunk
    return bytes(out)


def sign_request(method, url, headers, body, akid, secret, token, service, region):
    """Sign like an AWS SDK (botocore). Returns the headers to send."""
    req = botocore.awsrequest.AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, secret, token), service, region).add_auth(req)
    return dict(req.headers.items())


# ---------------------------------------------------------------- servers

class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose requests go to handle(h, method)."""

    def __init__(self, name):
        self.name = name
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _go(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(n) if n else b""
                try:
                    status, hdrs, out = srv.handle(self, method)
                except Exception as e:  # noqa: BLE001 - a fake bug is a 500, not a hang
                    status, hdrs, out = 500, {"Content-Type": "text/plain"}, f"fake error: {type(e).__name__}".encode()
                try:
                    self.send_response(status)
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a cancelled request): normal

            def do_GET(self):
                self._go("GET")

            def do_POST(self):
                self._go("POST")

            def do_PUT(self):
                self._go("PUT")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _xml_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def sts_error(status, code, message, typ="Sender"):
    body = (f'<ErrorResponse xmlns="{STS_NS}">\n  <Error>\n    <Type>{typ}</Type>\n    <Code>{code}</Code>\n'
            f'    <Message>{_xml_escape(message)}</Message>\n  </Error>\n  <RequestId>{uuid.uuid4()}</RequestId>\n'
            f'</ErrorResponse>\n')
    return status, {"Content-Type": "text/xml"}, body.encode()


STS_CODES = {"missing": "MissingAuthenticationToken", "incomplete": "IncompleteSignature",
             "invalid": "InvalidClientTokenId", "expired": "ExpiredToken", "expired_status": 400,
             "mismatch": "SignatureDoesNotMatch"}
AMP_CODES = {"missing": "MissingAuthenticationTokenException", "incomplete": "IncompleteSignatureException",
             "invalid": "UnrecognizedClientException", "expired": "ExpiredTokenException",
             "mismatch": "InvalidSignatureException"}

_SESSION_RE = re.compile(r"^[\w+=,.@-]{2,64}$")


class FakeSTS(_Server):
    def __init__(self, world):
        self.world = world
        super().__init__("sts")

    def handle(self, h, method):
        w = self.world
        path, _, query = h.path.partition("?")
        if method == "POST":
            ctype = h.headers.get("Content-Type", "")
            if not ctype.startswith("application/x-www-form-urlencoded"):
                return sts_error(400, "InvalidParameterValue", "Content-Type must be application/x-www-form-urlencoded")
            form = urllib.parse.parse_qs(h.body.decode("utf-8", "replace"), keep_blank_values=True)
        else:
            form = urllib.parse.parse_qs(query, keep_blank_values=True)
        p = {k: v[0] for k, v in form.items()}
        action = p.get("Action", "")
        w.count("sts_requests")
        if w.delay.get("sts"):
            time.sleep(w.delay["sts"])
        if p.get("Version") != "2011-06-15":
            return sts_error(400, "InvalidAction", f"Could not find operation {action} for version {p.get('Version')}")
        if action == "AssumeRole":
            return self.assume_role(h, method, p)
        if action == "AssumeRoleWithWebIdentity":
            return self.assume_role_web(p)
        if action == "GetCallerIdentity":
            return self.caller_identity(h, method)
        return sts_error(400, "InvalidAction", f"Could not find operation {action} for version 2011-06-15")

    def caller_identity(self, h, method):
        w = self.world
        w.count("sts_get_caller_identity")
        try:
            key = verify_sigv4(w, method, h.path, list(h.headers.items()), h.body, "sts", w.region, STS_CODES)
        except AuthError as e:
            return sts_error(e.status, e.code, e.message)
        uid = key.akid if key.role is None else f"AROA{key.akid[4:]}:{key.principal.rsplit('/', 1)[-1]}"
        body = (f'<GetCallerIdentityResponse xmlns="{STS_NS}">\n  <GetCallerIdentityResult>\n'
                f'    <Arn>{key.principal}</Arn>\n    <UserId>{uid}</UserId>\n    <Account>{key.account}</Account>\n'
                f'  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{uuid.uuid4()}</RequestId>\n'
                f'  </ResponseMetadata>\n</GetCallerIdentityResponse>\n')
        return 200, {"Content-Type": "text/xml"}, body.encode()

    def _duration(self, role, p):
        d = p.get("DurationSeconds")
        if d is None:
            dur = 3600
        else:
            if not d.isdigit():
                raise AuthError(400, "ValidationError", "1 validation error detected: Value at 'durationSeconds' "
                                "failed to satisfy constraint: Member must be a number")
            dur = int(d)
            if dur < self.world.min_duration:
                raise AuthError(400, "ValidationError", f"1 validation error detected: Value '{dur}' at "
                                f"'durationSeconds' failed to satisfy constraint: Member must have value greater "
                                f"than or equal to {self.world.min_duration}")
            if dur > role.max_duration:
                raise AuthError(400, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration "
                                "set for this role.")
        return role.issue_duration or dur

    def _creds_xml(self, action, key, role, session, extra=""):
        return (f'<{action}Response xmlns="{STS_NS}">\n  <{action}Result>\n{extra}'
                f'    <AssumedRoleUser>\n      <AssumedRoleId>AROA{_alnum(17)}:{session}</AssumedRoleId>\n'
                f'      <Arn>{key.principal}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n'
                f'      <AccessKeyId>{key.akid}</AccessKeyId>\n      <SecretAccessKey>{key.secret}</SecretAccessKey>\n'
                f'      <SessionToken>{key.token}</SessionToken>\n      <Expiration>{iso(key.expires)}</Expiration>\n'
                f'    </Credentials>\n  </{action}Result>\n  <ResponseMetadata>\n'
                f'    <RequestId>{uuid.uuid4()}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n').encode()

    def assume_role(self, h, method, p):
        w = self.world
        w.count("sts_assume_role")
        try:
            caller = verify_sigv4(w, method, h.path, list(h.headers.items()), h.body, "sts", w.region, STS_CODES)
        except AuthError as e:
            w.count("sts_auth_failures")
            return sts_error(e.status, e.code, e.message)
        fault = w.take_fault("sts")
        if fault:
            return sts_error(*fault)
        arn = p.get("RoleArn", "")
        session = p.get("RoleSessionName", "")
        if not _SESSION_RE.match(session):
            return sts_error(400, "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed "
                             "to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*")
        role = w.roles.get(arn)
        denied = sts_error(403, "AccessDenied", f"User: {caller.principal} is not authorized to perform: "
                           f"sts:AssumeRole on resource: {arn}")
        if role is None:
            return denied
        if role.trusted is not None and caller.principal not in role.trusted and caller.account not in role.trusted \
                and (caller.role or "") not in role.trusted:
            return denied
        if role.external_id is not None and p.get("ExternalId") != role.external_id:
            w.count("sts_external_id_mismatch")
            return denied
        try:
            dur = self._duration(role, p)
        except AuthError as e:
            return sts_error(e.status, e.code, e.message)
        key = w.issue(arn, dur, session)
        w.count("sts_issued")
        return 200, {"Content-Type": "text/xml"}, self._creds_xml("AssumeRole", key, role, session,
                                                                  "    <PackedPolicySize>6</PackedPolicySize>\n")

    def assume_role_web(self, p):
        w = self.world
        w.count("sts_web_identity")
        fault = w.take_fault("sts_web")
        if fault:
            return sts_error(*fault)
        arn = p.get("RoleArn", "")
        session = p.get("RoleSessionName", "")
        tok = p.get("WebIdentityToken", "")
        if not _SESSION_RE.match(session):
            return sts_error(400, "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed "
                             "to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*")
        with w.lock:
            t = w.web_tokens.get(tok)
        if t is None:
            return sts_error(400, "InvalidIdentityToken", "The ID Token provided is not a valid JWT. (You may see "
                             "this error if you sent an Access Token)")
        if w.now() >= t["expires"]:
            return sts_error(400, "ExpiredTokenException", "Token expired: current date/time must be before the "
                             "expiration date/time")
        role = w.roles.get(arn)
        if role is None or not role.web_identity:
            return sts_error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        try:
            dur = self._duration(role, p)
        except AuthError as e:
            return sts_error(e.status, e.code, e.message)
        key = w.issue(arn, dur, session)
        w.count("sts_issued")
        extra = (f"    <SubjectFromWebIdentityToken>{_xml_escape(t['subject'])}</SubjectFromWebIdentityToken>\n"
                 f"    <Audience>sts.amazonaws.com</Audience>\n    <Provider>oidc.eks.amazonaws.com</Provider>\n")
        return 200, {"Content-Type": "text/xml"}, self._creds_xml("AssumeRoleWithWebIdentity", key, role, session,
                                                                  extra)


class FakeIMDS(_Server):
    """IMDSv2 only: a token from PUT /latest/api/token is required."""

    def __init__(self, world):
        self.world = world
        super().__init__("imds")

    def handle(self, h, method):
        w = self.world
        path = h.path.partition("?")[0]
        if w.delay.get("imds"):
            time.sleep(w.delay["imds"])
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, {}, b""
            if h.headers.get("X-Forwarded-For"):
                return 403, {}, b""
            ttl = h.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= w.imds_token_ttl_max:
                return 400, {}, b""
            tok = base64.b64encode(os.urandom(42)).decode()
            with w.lock:
                w.imds_tokens[tok] = w.now() + int(ttl)
            w.count("imds_token")
            return 200, {"Content-Type": "text/plain", "X-aws-ec2-metadata-token-ttl-seconds": ttl}, tok.encode()
        tok = h.headers.get("X-aws-ec2-metadata-token")
        with w.lock:
            exp = w.imds_tokens.get(tok) if tok else None
        if exp is None or w.now() >= exp:
            w.count("imds_unauthorized")
            return 401, {}, b""
        base = "/latest/meta-data/iam/security-credentials/"
        if not path.startswith(base):
            return 404, {}, b""
        if w.imds_role is None:
            return 404, {}, b""
        role = w.roles[w.imds_role]
        name = path[len(base):]
        if name == "":
            w.count("imds_role")
            return 200, {"Content-Type": "text/plain"}, role.name.encode()
        if name != role.name:
            return 404, {}, b""
        fault = w.take_fault("imds")
        if fault:
            return fault[0], {"Content-Type": "text/plain"}, fault[2].encode()
        with w.lock:
            cur = w.imds_current
        if cur is None or cur.expires - w.now() <= w.imds_refresh_before:
            cur = w.issue(w.imds_role, w.imds_duration, "i-0123456789abcdef0")
            with w.lock:
                w.imds_current = cur
        w.count("imds_creds")
        doc = {"Code": "Success", "LastUpdated": iso(w.now()), "Type": "AWS-HMAC", "AccessKeyId": cur.akid,
               "SecretAccessKey": cur.secret, "Token": cur.token, "Expiration": iso(cur.expires)}
        return 200, {"Content-Type": "text/plain"}, json.dumps(doc, indent=2).encode()


class FakeECS(_Server):
    """The ECS agent / EKS Pod Identity agent credentials endpoint."""

    def __init__(self, world):
        self.world = world
        super().__init__("ecs")

    def handle(self, h, method):
        w = self.world
        w.count("ecs_requests")
        if h.path.partition("?")[0] != w.ecs_path:
            return 404, {"Content-Type": "application/json"}, b'{"code":"NotFound","message":"not found"}'
        if w.ecs_auth is not None and h.headers.get("Authorization") != w.ecs_auth:
            w.count("ecs_unauthorized")
            return 401, {"Content-Type": "application/json"}, \
                b'{"code":"InvalidToken","message":"Invalid authorization token"}'
        fault = w.take_fault("ecs")
        if fault:
            return fault[0], {"Content-Type": "application/json"}, json.dumps(
                {"code": fault[1], "message": fault[2]}).encode()
        key = w.issue(w.ecs_role, w.ecs_duration, "ecs-task")
        w.count("ecs_creds")
        doc = {"RoleArn": w.ecs_role, "AccessKeyId": key.akid, "SecretAccessKey": key.secret, "Token": key.token,
               "Expiration": iso(key.expires), "AccountId": w.roles[w.ecs_role].account}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()


class FakeAMP(_Server):
    """An AMP workspace's remote_write endpoint: SigV4 (service "aps") checked
    exactly like AWS, then snappy + protobuf decoded and samples counted."""

    def __init__(self, world, workspace="ws-00000000-0000-0000-0000-000000000000"):
        self.world = world
        self.workspace = workspace
        super().__init__("amp")
        self.write_url = f"{self.url}/workspaces/{workspace}/api/v1/remote_write"

    def _err(self, status, code, message, akid=None):
        with self.world.lock:
            self.world.amp_rejections.append((code, akid))
        return status, {"Content-Type": "application/json", "x-amzn-ErrorType": code,
                        "x-amzn-RequestId": str(uuid.uuid4())}, json.dumps({"message": message}).encode()

    def handle(self, h, method):
        w = self.world
        w.count("amp_requests")
        path = h.path.partition("?")[0]
        if method != "POST" or path != f"/workspaces/{self.workspace}/api/v1/remote_write":
            return self._err(404, "ResourceNotFoundException", f"Workspace not found or path {path} unknown")
        try:
            key = verify_sigv4(w, method, h.path, list(h.headers.items()), h.body, "aps", w.region, AMP_CODES)
        except AuthError as e:
            m = _AUTH_RE.match((h.headers.get("Authorization") or "").strip())
            return self._err(e.status, e.code, e.message, m.group(1) if m else None)
        if w.amp_allowed is not None and key.principal not in w.amp_allowed and (key.role or "") not in w.amp_allowed:
            return self._err(403, "AccessDeniedException", f"User: {key.principal} is not authorized to perform: "
                             f"aps:RemoteWrite on resource: arn:aws:aps:{w.region}:{key.account}:workspace/"
                             f"{self.workspace}", key.akid)
        fault = w.take_fault("amp")
        if fault:
            return self._err(*fault)
        if h.headers.get("Content-Encoding") != "snappy":
            return self._err(400, "ValidationException", "Content-Encoding must be snappy")
        try:
            req = mgtest.decode_write_request(mgtest.snappy_decompress(h.body))
        except Exception as e:  # noqa: BLE001
            return self._err(400, "ValidationException", f"cannot decode the write request: {type(e).__name__}")
        n = sum(len(ts["samples"]) for ts in req["timeseries"])
        with w.lock:
            w.amp_samples += n
            w.amp_requests_ok += 1
            w.amp_keys_used[key.akid] = w.amp_keys_used.get(key.akid, 0) + 1
        return 200, {}, b""


EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
EC2_CODES = {"missing": "MissingAuthenticationToken", "incomplete": "IncompleteSignature",
             "invalid": "AuthFailure", "expired": "RequestExpired", "expired_status": 400,
             "mismatch": "SignatureDoesNotMatch"}
# EC2 answers refused credentials with its own words and statuses.
_EC2_AUTH = {"AuthFailure": (401, "AWS was not able to validate the provided access credentials"),
             "RequestExpired": (400, "Request has expired."),
             "MissingAuthenticationToken": (401, "Request is missing Authentication Token")}
# DescribeInstances filters the fake applies: name -> instance field.
_EC2_FILTERS = {"instance-id": "id", "image-id": "image", "instance-state-name": "state", "instance-type": "type",
                "availability-zone": "az", "private-ip-address": "private_ip", "ip-address": "public_ip",
                "vpc-id": "vpc", "subnet-id": "subnet", "architecture": "arch", "platform": "platform",
                "instance-lifecycle": "lifecycle", "owner-id": "owner", "reservation-id": "reservation",
                "private-dns-name": "private_dns", "dns-name": "public_dns"}
_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


def ec2_error(status, code, message):
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f'<Message>{_xml_escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID>'
            f'</Response>')
    return status, {"Content-Type": "text/xml;charset=UTF-8"}, body.encode()


def _ec2_match(pattern, value):
    """EC2 filter values: * and ? are wildcards, \\ escapes them."""
    if value is None:
        return False
    rx = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            rx += re.escape(pattern[i + 1])
            i += 2
            continue
        rx += ".*" if ch == "*" else "." if ch == "?" else re.escape(ch)
        i += 1
    return re.fullmatch(rx, value, re.S) is not None


class FakeEC2(_Server):
    """EC2's Query API as service discovery uses it: DescribeInstances (the
    usual filters, MaxResults/NextToken pagination) and
    DescribeAvailabilityZones, with SigV4 (service "ec2") checked like AWS
    and EC2's error document, codes and statuses (AuthFailure 401,
    RequestExpired 400 for an expired session token, UnauthorizedOperation
    403, RequestLimitExceeded 503 through World.fail["ec2"])."""

    def __init__(self, world):
        self.world = world
        super().__init__("ec2")

    def _refuse(self, status, code, message, akid=None):
        with self.world.lock:
            self.world.ec2_rejections.append((code, akid))
        return ec2_error(status, code, message)

    def handle(self, h, method):
        w = self.world
        path, _, query = h.path.partition("?")
        if method == "POST":
            if not h.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                return ec2_error(400, "InvalidParameterValue", "Content-Type must be application/x-www-form-urlencoded")
            form = urllib.parse.parse_qs(h.body.decode("utf-8", "replace"), keep_blank_values=True)
        else:
            form = urllib.parse.parse_qs(query, keep_blank_values=True)
        p = {k: v[0] for k, v in form.items()}
        action = p.get("Action", "")
        w.count("ec2_requests")
        if w.delay.get("ec2"):
            time.sleep(w.delay["ec2"])
        try:
            key = verify_sigv4(w, method, h.path, list(h.headers.items()), h.body, "ec2", w.region, EC2_CODES)
        except AuthError as e:
            m = _AUTH_RE.match((h.headers.get("Authorization") or "").strip())
            status, message = _EC2_AUTH.get(e.code, (e.status, e.message))
            return self._refuse(status, e.code, message, m.group(1) if m else None)
        if p.get("Version") != "2016-11-15":
            return ec2_error(400, "InvalidAction", f"The action {action} is not valid for this web service.")
        with w.lock:
            w.ec2_requests.append((action, p, key.akid))
        if w.ec2_allowed is not None and key.principal not in w.ec2_allowed and (key.role or "") not in w.ec2_allowed:
            return self._refuse(403, "UnauthorizedOperation", "You are not authorized to perform this operation. "
                                "Encoded authorization failure message: " + _alnum(40), key.akid)
        fault = w.take_fault("ec2")
        if fault:
            return ec2_error(*fault)
        if action == "DescribeAvailabilityZones":
            w.count("ec2_describe_availability_zones")
            return self.zones()
        if action == "DescribeInstances":
            w.count("ec2_describe_instances")
            return self.instances(p)
        return ec2_error(400, "InvalidAction", f"The action {action} is not valid for this web service.")

    def zones(self):
        w = self.world
        items = "".join(f"<item><zoneName>{z}</zoneName><zoneState>available</zoneState>"
                        f"<regionName>{w.region}</regionName><zoneId>{zid}</zoneId>"
                        f"<zoneType>availability-zone</zoneType><messageSet/></item>"
                        for z, zid in sorted(w.ec2_zones.items()))
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeAvailabilityZonesResponse xmlns="{EC2_NS}">'
                f'<requestId>{uuid.uuid4()}</requestId><availabilityZoneInfo>{items}</availabilityZoneInfo>'
                f'</DescribeAvailabilityZonesResponse>')
        return 200, {"Content-Type": "text/xml;charset=UTF-8"}, body.encode()

    @staticmethod
    def _filters(p):
        out = {}
        for k, v in p.items():
            m = re.fullmatch(r"Filter\.(\d+)\.(Name|Value\.(\d+))", k)
            if m:
                f = out.setdefault(int(m.group(1)), {"name": None, "values": []})
                if m.group(2) == "Name":
                    f["name"] = v
                else:
                    f["values"].append((int(m.group(3)), v))
        return [(f["name"], [v for _, v in sorted(f["values"])]) for _, f in sorted(out.items())]

    @staticmethod
    def _matches(inst, filters):
        for name, values in filters:
            if name.startswith("tag:"):
                got = [inst["tags"].get(name[4:])]
            elif name == "tag-key":
                got = list(inst["tags"])
            elif name == "tag-value":
                got = list(inst["tags"].values())
            else:
                got = [inst.get(_EC2_FILTERS[name])]
            if not any(_ec2_match(v, g) for v in values for g in got):
                return False
        return True

    def instances(self, p):
        w = self.world
        filters = self._filters(p)
        for name, values in filters:
            if not name or not (name in _EC2_FILTERS or name.startswith("tag:") or name in ("tag-key", "tag-value")):
                return ec2_error(400, "InvalidParameterValue", f"The filter '{name}' is invalid")
            if not values:
                return ec2_error(400, "InvalidParameterCombination", f"The filter '{name}' has no values")
        try:
            max_results = int(p.get("MaxResults", "1000"))
        except ValueError:
            max_results = 0
        if not 5 <= max_results <= 1000:
            return ec2_error(400, "InvalidParameterValue", f"Value ( {p.get('MaxResults')} ) for parameter "
                             "maxResults is invalid. Expecting a value between 5 and 1000.")
        start = 0
        if p.get("NextToken"):
            try:
                start = json.loads(base64.b64decode(p["NextToken"]))["o"]
            except Exception:  # noqa: BLE001 - any bad token is the same error
                return ec2_error(400, "InvalidPaginationToken", "The specified pagination token is not valid "
                                 "or is expired.")
        with w.lock:
            matched = [dict(i) for i in w.ec2_instances if self._matches(i, filters)]
        size = min(max_results, w.ec2_page_size or max_results)
        page, rest = matched[start:start + size], start + size < len(matched)
        token = base64.b64encode(json.dumps({"o": start + size}).encode()).decode() if rest else None
        res = []
        for inst in page:
            if res and res[-1][0]["reservation"] == inst["reservation"]:
                res[-1].append(inst)
            else:
                res.append([inst])
        items = "".join(self._reservation(r) for r in res)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="{EC2_NS}">\n'
                f'  <requestId>{uuid.uuid4()}</requestId>\n  <reservationSet>{items}</reservationSet>\n'
                + (f"  <nextToken>{token}</nextToken>\n" if token else "") + "</DescribeInstancesResponse>\n")
        return 200, {"Content-Type": "text/xml;charset=UTF-8"}, body.encode()

    @staticmethod
    def _el(name, value):
        return f"<{name}/>" if value is None or value == "" else f"<{name}>{_xml_escape(str(value))}</{name}>"

    def _reservation(self, insts):
        return (f"<item><reservationId>{insts[0]['reservation']}</reservationId>"
                f"{self._el('ownerId', insts[0]['owner'])}<groupSet/><instancesSet>"
                + "".join(self._instance(i) for i in insts) + "</instancesSet></item>")

    def _instance(self, i):
        el = self._el
        x = [el("instanceId", i["id"]), el("imageId", i["image"]),
             f"<instanceState><code>{_STATE_CODES.get(i['state'], 16)}</code><name>{i['state']}</name></instanceState>",
             el("privateDnsName", i["private_dns"]), el("dnsName", i["public_dns"]), "<reason/>",
             "<amiLaunchIndex>0</amiLaunchIndex>", "<productCodes/>", el("instanceType", i["type"]),
             "<launchTime>2024-05-01T12:00:00.000Z</launchTime>",
             f"<placement><availabilityZone>{i['az']}</availabilityZone><groupName/><tenancy>default</tenancy>"
             "</placement>", "<monitoring><state>disabled</state></monitoring>"]
        if i["platform"]:
            x.append(el("platform", i["platform"]))
        if i["vpc"]:
            x += [el("subnetId", i["subnet"]), el("vpcId", i["vpc"])]
        if i["private_ip"]:
            x.append(el("privateIpAddress", i["private_ip"]))
        if i["public_ip"]:
            x.append(el("ipAddress", i["public_ip"]))
        x += ["<sourceDestCheck>true</sourceDestCheck>", el("architecture", i["arch"]),
              "<rootDeviceType>ebs</rootDeviceType>", "<rootDeviceName>/dev/xvda</rootDeviceName>"]
        if i["lifecycle"]:
            x.append(el("instanceLifecycle", i["lifecycle"]))
        x.append("<virtualizationType>hvm</virtualizationType>")
        if i["tags"]:
            x.append("<tagSet>" + "".join(f"<item>{el('key', k)}{el('value', v)}</item>"
                                          for k, v in i["tags"].items()) + "</tagSet>")
        enis = []
        for n, e in enumerate(i["enis"] or []):
            v6 = "".join(f"<item>{el('ipv6Address', a)}{el('isPrimaryIpv6', 'true' if pri else 'false')}</item>"
                         for a, pri in e.get("ipv6", []))
            enis.append(f"<item><networkInterfaceId>eni-{i['id'][2:]}{n}</networkInterfaceId>"
                        f"{el('subnetId', e.get('subnet'))}{el('vpcId', i['vpc'])}<status>in-use</status>"
                        f"{el('privateIpAddress', i['private_ip'] if n == 0 else None)}"
                        f"<attachment><attachmentId>eni-attach-{n}</attachmentId>"
                        f"<deviceIndex>{e.get('device_index', n)}</deviceIndex><status>attached</status></attachment>"
                        + (f"<ipv6AddressesSet>{v6}</ipv6AddressesSet>" if v6 else "") + "</item>")
        if enis:
            x.append("<networkInterfaceSet>" + "".join(enis) + "</networkInterfaceSet>")
        x += ["<ebsOptimized>false</ebsOptimized>", "<hypervisor>xen</hypervisor>"]
        return "<item>" + "".join(x) + "</item>"


class Fakes:
    """All fakes around one World."""

    def __init__(self, world=None):
        self.world = world or World()
        self.sts = FakeSTS(self.world)
        self.imds = FakeIMDS(self.world)
        self.ecs = FakeECS(self.world)
        self.amp = FakeAMP(self.world)
        self.ec2 = FakeEC2(self.world)
        self.sts_url = self.sts.url
        self.imds_url = self.imds.url
        self.ecs_base = self.ecs.url
        self.amp_write_url = self.amp.write_url
        self.ec2_url = self.ec2.url

    def urls(self):
        return {"sts": self.sts_url, "imds": self.imds_url, "ecs": self.ecs_base, "ecs_path": self.world.ecs_path,
                "amp": self.amp_write_url, "ec2": self.ec2_url, "region": self.world.region}

    def stop(self):
        for s in (self.sts, self.imds, self.ecs, self.amp, self.ec2):
            s.stop()


# ---------------------------------------------------------------- control (for C tests)

class Control(_Server):
    """JSON control of a World for tests in other processes:
      POST /control/user     {"account", "name"}           -> {"access_key_id", "secret_access_key"}
      POST /control/role     {"arn", "external_id", "trusted", "issue_duration", "web_identity", "max_duration"}
      POST /control/web_token {"ttl"}                      -> {"token"}
      POST /control/issue    {"role", "duration"}          -> {"access_key_id", "secret_access_key", "session_token", "expiration"}
      POST /control/set      {"imds_role", "imds_duration", "imds_refresh_before", "ecs_role", "ecs_duration",
                              "ecs_auth", "amp_allowed", "clock_skew", "min_duration", "delay": {...},
                              "imds_tokens_expire": true}
      POST /control/fail     {"endpoint", "status", "code", "message", "times"}
      POST /control/revoke   {"access_key_id"}
      GET  /control/state                                  -> counters and AMP figures (no secrets)
      GET  /control/key/<akid>                             -> what the key belongs to
    Secrets are only in the answers of /control/user and /control/issue."""

    def __init__(self, world, fakes):
        self.world = world
        self.fakes = fakes
        super().__init__("control")

    def handle(self, h, method):
        w = self.world
        path = h.path.partition("?")[0]
        doc = json.loads(h.body or b"{}") if method == "POST" else {}

        def ok(obj):
            return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()
        if path == "/control/user":
            k = w.add_user(doc.get("account", "111111111111"), doc.get("name", "moongate"))
            return ok({"access_key_id": k.akid, "secret_access_key": k.secret})
        if path == "/control/role":
            trusted = doc.get("trusted")
            w.add_role(doc["arn"], external_id=doc.get("external_id"),
                       trusted=set(trusted) if trusted is not None else None,
                       issue_duration=doc.get("issue_duration"), web_identity=bool(doc.get("web_identity")),
                       max_duration=doc.get("max_duration", 43200))
            return ok({})
        if path == "/control/web_token":
            return ok({"token": w.add_web_token(ttl=doc.get("ttl", 3600))})
        if path == "/control/issue":
            k = w.issue(doc["role"], doc.get("duration", 3600))
            return ok({"access_key_id": k.akid, "secret_access_key": k.secret, "session_token": k.token,
                       "expiration": iso(k.expires)})
        if path == "/control/set":
            for f in ("imds_role", "imds_duration", "imds_refresh_before", "ecs_role", "ecs_duration", "ecs_auth",
                      "clock_skew", "min_duration"):
                if f in doc:
                    setattr(w, f, doc[f])
            if "amp_allowed" in doc:
                w.amp_allowed = set(doc["amp_allowed"]) if doc["amp_allowed"] is not None else None
            if "delay" in doc:
                w.delay.update(doc["delay"])
            if doc.get("imds_tokens_expire"):  # every IMDS session token ends now
                with w.lock:
                    w.imds_tokens.clear()
            return ok({})
        if path == "/control/fail":
            with w.lock:
                w.fail.setdefault(doc["endpoint"], []).extend(
                    [(doc.get("status", 500), doc.get("code", "InternalFailure"),
                      doc.get("message", "injected failure"))] * int(doc.get("times", 1)))
            return ok({})
        if path == "/control/revoke":
            k = w.lookup(doc["access_key_id"])
            if k:
                k.revoked = True
            return ok({"revoked": bool(k)})
        if path == "/control/state":
            with w.lock:
                return ok({"counters": dict(w.counters), "amp_samples": w.amp_samples,
                           "amp_requests_ok": w.amp_requests_ok, "amp_keys_used": dict(w.amp_keys_used),
                           "amp_rejections": list(w.amp_rejections)})
        if path.startswith("/control/key/"):
            k = w.lookup(path[len("/control/key/"):])
            return ok(k.info() if k else {})
        return 404, {}, b""


def serve(argv):
    region = "us-east-1"
    if "--region" in argv:
        region = argv[argv.index("--region") + 1]
    world = World(region=region)
    fakes = Fakes(world)
    ctl = Control(world, fakes)
    urls = fakes.urls()
    urls["control"] = ctl.url
    sys.stdout.write("READY " + json.dumps(urls) + "\n")
    sys.stdout.flush()
    try:
        while sys.stdin.read(4096):  # until the test closes our stdin (or dies)
            pass
    except KeyboardInterrupt:
        pass
    ctl.stop()
    fakes.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        sys.stderr.write("usage: awsfakes.py serve [--region REGION]\n")
        sys.exit(2)
