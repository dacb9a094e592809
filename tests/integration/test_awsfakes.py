"""Checks of awsfakes against an independent AWS client (botocore): the
fake STS, IMDSv2, ECS endpoint and AMP workspace accept what an AWS SDK
sends and refuse what AWS refuses, with AWS's codes, messages and status.
The botocore STS client parses the fake's answers, which shows the XML is
what real STS sends. Also runs `awsfakes.py serve` and its control API, as
the C tests do. Needs no moongate binary. Ends with `N passed, M failed`."""

import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import awsfakes  # noqa: E402
import mgtest  # noqa: E402
from mgtest import Checks, http_request  # noqa: E402

import botocore.session  # noqa: E402  (awsfakes made it importable)
import botocore.exceptions  # noqa: E402


def form(d):
    return urllib.parse.urlencode(d).encode()


def sts_post(fk, params, key=None, region=None, tamper=False):
    body = form(params)
    hdrs = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if key is not None:
        akid, secret, token = key
        hdrs = awsfakes.sign_request("POST", fk.sts_url + "/", hdrs, body, akid, secret, token, "sts",
                                     region or fk.world.region)
        if tamper:
            a = hdrs["Authorization"]
            hdrs["Authorization"] = a[:-1] + ("0" if a[-1] != "0" else "1")
    return http_request(fk.sts_url + "/", data=body, method="POST", headers=hdrs)


def xml_code(body):
    s = body.decode()
    return s.split("<Code>")[1].split("</Code>")[0] if "<Code>" in s else None


def check_sts(c, fk):
    w = fk.world
    user = w.add_user("111111111111", "writer")
    uk = (user.akid, user.secret, None)
    w.add_role("arn:aws:iam::222222222222:role/amp-writer", external_id="ext-123",
               trusted={"111111111111"})
    w.add_role("arn:aws:iam::333333333333:role/second-hop",
               trusted={"arn:aws:iam::222222222222:role/amp-writer"})
    base = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": "arn:aws:iam::222222222222:role/amp-writer",
            "RoleSessionName": "moongate-test", "ExternalId": "ext-123", "DurationSeconds": "900"}
    st, _, body = sts_post(fk, base, uk)
    ok = c.check("STS AssumeRole signed by botocore -> 200", st == 200, f"{st} {xml_code(body)}")
    if ok:
        akid = body.decode().split("<AccessKeyId>")[1].split("<")[0]
        k = w.lookup(akid)
        c.check("issued key belongs to the role in account 222222222222",
                k is not None and k.role == base["RoleArn"] and k.account == "222222222222" and k.token)
        hop = dict(base, RoleArn="arn:aws:iam::333333333333:role/second-hop")
        del hop["ExternalId"]
        st2, _, b2 = sts_post(fk, hop, (k.akid, k.secret, k.token))
        c.check("chained AssumeRole with the session's credentials -> 200", st2 == 200, f"{st2} {xml_code(b2)}")
        st3, _, b3 = sts_post(fk, hop, (k.akid, k.secret, None))
        c.check("session key without its token -> 403 InvalidClientTokenId",
                st3 == 403 and xml_code(b3) == "InvalidClientTokenId", f"{st3} {xml_code(b3)}")
    st, _, body = sts_post(fk, base, uk, tamper=True)
    c.check("tampered signature -> 403 SignatureDoesNotMatch with AWS's message",
            st == 403 and xml_code(body) == "SignatureDoesNotMatch" and awsfakes.SIG_MISMATCH in body.decode(),
            f"{st} {body[:200]!r}")
    st, _, body = sts_post(fk, base, ("AKIAUNKNOWNUNKNOWN00", "x" * 40, None))
    c.check("unknown key -> 403 InvalidClientTokenId", st == 403 and xml_code(body) == "InvalidClientTokenId",
            f"{st} {xml_code(body)}")
    st, _, body = sts_post(fk, dict(base, ExternalId="wrong"), uk)
    c.check("wrong ExternalId -> 403 AccessDenied naming the caller and the role",
            st == 403 and xml_code(body) == "AccessDenied" and "arn:aws:iam::111111111111:user/writer" in body.decode()
            and "sts:AssumeRole on resource: arn:aws:iam::222222222222:role/amp-writer" in body.decode(),
            f"{st} {body[:300]!r}")
    st, _, body = sts_post(fk, base, uk, region="eu-west-1")
    c.check("credential scoped to another region -> 403 SignatureDoesNotMatch",
            st == 403 and xml_code(body) == "SignatureDoesNotMatch", f"{st} {xml_code(body)}")
    st, _, body = sts_post(fk, base, None)
    c.check("unsigned AssumeRole -> 403 MissingAuthenticationToken",
            st == 403 and xml_code(body) == "MissingAuthenticationToken", f"{st} {xml_code(body)}")
    # Expired session credentials: STS answers 400 ExpiredToken.
    short = w.issue("arn:aws:iam::222222222222:role/amp-writer", 1)
    w.clock_skew = 2
    st, _, body = sts_post(fk, dict(base, RoleArn="arn:aws:iam::333333333333:role/second-hop"),
                           (short.akid, short.secret, short.token))
    c.check("expired session credentials -> 400 ExpiredToken", st == 400 and xml_code(body) == "ExpiredToken",
            f"{st} {xml_code(body)}")
    w.clock_skew = 400  # the request is signed with the real time: more than 5 minutes off
    st, _, body = sts_post(fk, base, uk)
    c.check("request time 400 s off -> 403 'Signature expired'",
            st == 403 and "Signature expired" in body.decode(), f"{st} {body[:200]!r}")
    w.clock_skew = 0

    # botocore's own STS client parses the fake's answers and errors.
    sess = botocore.session.get_session()
    cl = sess.create_client("sts", region_name=w.region, endpoint_url=fk.sts_url,
                            aws_access_key_id=user.akid, aws_secret_access_key=user.secret)
    try:
        r = cl.assume_role(RoleArn=base["RoleArn"], RoleSessionName="boto", ExternalId="ext-123",
                           DurationSeconds=900)
        cr = r["Credentials"]
        c.check("botocore's STS client parses AssumeRole (key, token, expiration)",
                cr["AccessKeyId"].startswith("ASIA") and cr["SessionToken"] and
                cr["Expiration"].timestamp() > time.time() + 800)
    except Exception as e:  # noqa: BLE001
        c.check("botocore's STS client parses AssumeRole (key, token, expiration)", False, repr(e)[:300])
    try:
        ident = cl.get_caller_identity()
        c.check("botocore's GetCallerIdentity names the user", ident["Arn"] == "arn:aws:iam::111111111111:user/writer"
                and ident["Account"] == "111111111111", str(ident)[:200])
    except Exception as e:  # noqa: BLE001
        c.check("botocore's GetCallerIdentity names the user", False, repr(e)[:300])
    try:
        cl.assume_role(RoleArn=base["RoleArn"], RoleSessionName="boto")
        c.check("botocore sees AccessDenied without ExternalId", False, "no error")
    except botocore.exceptions.ClientError as e:
        c.check("botocore sees AccessDenied without ExternalId", e.response["Error"]["Code"] == "AccessDenied",
                str(e.response["Error"]))

    # Web identity: unsigned, token checked.
    w.add_role("arn:aws:iam::444444444444:role/irsa", web_identity=True)
    tok = w.add_web_token()
    wi = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
          "RoleArn": "arn:aws:iam::444444444444:role/irsa", "RoleSessionName": "pod", "WebIdentityToken": tok}
    st, _, body = sts_post(fk, wi)
    c.check("AssumeRoleWithWebIdentity (unsigned, good token) -> 200", st == 200 and b"<SessionToken>" in body,
            f"{st} {xml_code(body)}")
    st, _, body = sts_post(fk, dict(wi, WebIdentityToken="eyJnotatoken"))
    c.check("bad web identity token -> 400 InvalidIdentityToken",
            st == 400 and xml_code(body) == "InvalidIdentityToken", f"{st} {xml_code(body)}")
    ucl = sess.create_client("sts", region_name=w.region, endpoint_url=fk.sts_url,
                             config=botocore.config.Config(signature_version=botocore.UNSIGNED))
    try:
        r = ucl.assume_role_with_web_identity(RoleArn=wi["RoleArn"], RoleSessionName="pod", WebIdentityToken=tok)
        c.check("botocore parses AssumeRoleWithWebIdentity", r["Credentials"]["AccessKeyId"].startswith("ASIA"))
    except Exception as e:  # noqa: BLE001
        c.check("botocore parses AssumeRoleWithWebIdentity", False, repr(e)[:300])


def check_imds_ecs(c, fk):
    w = fk.world
    w.add_role("arn:aws:iam::555555555555:role/ec2-amp", trusted=None)
    w.imds_role = "arn:aws:iam::555555555555:role/ec2-amp"
    u = fk.imds_url
    st, _, _ = http_request(u + "/latest/meta-data/iam/security-credentials/")
    c.check("IMDS without a token -> 401 (IMDSv2 only)", st == 401, str(st))
    st, _, _ = http_request(u + "/latest/api/token", data=b"", method="PUT")
    c.check("IMDS token without TTL header -> 400", st == 400, str(st))
    st, h, tok = http_request(u + "/latest/api/token", data=b"", method="PUT",
                              headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    c.check("IMDS token -> 200 with TTL header", st == 200 and h.get("X-aws-ec2-metadata-token-ttl-seconds") == "21600",
            f"{st} {h}")
    th = {"X-aws-ec2-metadata-token": tok.decode()}
    st, _, role = http_request(u + "/latest/meta-data/iam/security-credentials/", headers=th)
    c.check("IMDS role listing", st == 200 and role == b"ec2-amp", f"{st} {role!r}")
    st, _, b1 = http_request(u + "/latest/meta-data/iam/security-credentials/ec2-amp", headers=th)
    st2, _, b2 = http_request(u + "/latest/meta-data/iam/security-credentials/ec2-amp", headers=th)
    d1, d2 = json.loads(b1), json.loads(b2)
    c.check("IMDS credentials JSON (Code Success, ASIA key, token, expiration)",
            st == 200 and d1["Code"] == "Success" and d1["AccessKeyId"].startswith("ASIA") and d1["Token"] and
            d1["Expiration"].endswith("Z"))
    c.check("IMDS serves the same credentials until near expiry", d1["AccessKeyId"] == d2["AccessKeyId"])

    w.add_role("arn:aws:iam::666666666666:role/task", trusted=None)
    w.ecs_role = "arn:aws:iam::666666666666:role/task"
    w.ecs_auth = "Bearer pod-identity-token"
    url = fk.ecs_base + w.ecs_path
    st, _, body = http_request(url)
    c.check("ECS endpoint without Authorization -> 401", st == 401, f"{st} {body!r}")
    st, _, body = http_request(url, headers={"Authorization": "Bearer pod-identity-token"})
    d = json.loads(body) if st == 200 else {}
    c.check("ECS endpoint with Authorization -> credentials JSON",
            st == 200 and d.get("AccessKeyId", "").startswith("ASIA") and d.get("Token"), f"{st}")


def write_body(n=3):
    series = [({"__name__": "m", "i": str(i)}, [(float(i), mgtest.now_ms())]) for i in range(n)]
    return awsfakes.snappy_compress(mgtest.encode_write_request(series))


def amp_post(fk, body, key, tamper=False, region=None):
    hdrs = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0"}
    if key:
        hdrs = awsfakes.sign_request("POST", fk.amp_write_url, hdrs, body, key[0], key[1], key[2], "aps",
                                     region or fk.world.region)
        if tamper:
            hdrs["X-Prometheus-Remote-Write-Version"] = "0.1.1"  # a signed header changed after signing
    return http_request(fk.amp_write_url, data=body, method="POST", headers=hdrs)


def check_amp(c, fk):
    w = fk.world
    body = write_body()
    c.check("literal-only snappy decodes to the same bytes",
            mgtest.snappy_decompress_py(awsfakes.snappy_compress(b"x" * 70000 + bytes(range(256)))) ==
            b"x" * 70000 + bytes(range(256)))
    w.add_role("arn:aws:iam::777777777777:role/writer", trusted=None)
    w.add_role("arn:aws:iam::777777777777:role/other", trusted=None)
    w.amp_allowed = {"arn:aws:iam::777777777777:role/writer"}
    good = w.issue("arn:aws:iam::777777777777:role/writer", 600)
    other = w.issue("arn:aws:iam::777777777777:role/other", 600)
    st, h, rb = amp_post(fk, body, (good.akid, good.secret, good.token))
    c.check("AMP: remote_write signed by botocore with an allowed role -> 200, samples counted",
            st == 200 and w.amp_samples == 3, f"{st} {rb!r} samples={w.amp_samples}")
    st, h, rb = amp_post(fk, body, (good.akid, good.secret, good.token), tamper=True)
    c.check("AMP: signature mismatch -> 403 InvalidSignatureException with AWS's message",
            st == 403 and h.get("x-amzn-ErrorType") == "InvalidSignatureException"
            and json.loads(rb)["message"] == awsfakes.SIG_MISMATCH, f"{st} {h.get('x-amzn-ErrorType')} {rb!r}")
    st, h, rb = amp_post(fk, body, (other.akid, other.secret, other.token))
    c.check("AMP: a role not allowed -> 403 AccessDeniedException",
            st == 403 and h.get("x-amzn-ErrorType") == "AccessDeniedException", f"{st} {rb!r}")
    st, h, rb = amp_post(fk, body, ("AKIAUNKNOWNUNKNOWN00", "x" * 40, None))
    c.check("AMP: unknown key -> 403 UnrecognizedClientException",
            st == 403 and h.get("x-amzn-ErrorType") == "UnrecognizedClientException", f"{st} {rb!r}")
    st, h, rb = amp_post(fk, body, None)
    c.check("AMP: no signature -> 403 MissingAuthenticationTokenException",
            st == 403 and h.get("x-amzn-ErrorType") == "MissingAuthenticationTokenException", f"{st} {rb!r}")
    st, h, rb = amp_post(fk, body, (good.akid, good.secret, good.token), region="eu-west-1")
    c.check("AMP: wrong region in the scope -> 403 InvalidSignatureException",
            st == 403 and h.get("x-amzn-ErrorType") == "InvalidSignatureException", f"{st} {rb!r}")
    old = w.issue("arn:aws:iam::777777777777:role/writer", -10)  # expired ten seconds ago
    st, h, rb = amp_post(fk, body, (old.akid, old.secret, old.token))
    c.check("AMP: expired session -> 403 ExpiredTokenException, {\"message\": ...expired}",
            st == 403 and h.get("x-amzn-ErrorType") == "ExpiredTokenException"
            and json.loads(rb) == {"message": awsfakes.TOKEN_EXPIRED}, f"{st} {h.get('x-amzn-ErrorType')} {rb!r}")


def check_serve(c):
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "awsfakes.py"),
                          "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        c.check("serve prints READY with URLs", line.startswith("READY "), line[:200])
        urls = json.loads(line[6:])
        ctl = urls["control"]

        def post(path, doc):
            st, _, b = http_request(ctl + path, data=json.dumps(doc).encode(), method="POST",
                                    headers={"Content-Type": "application/json"})
            return st, json.loads(b or b"{}")
        st, u = post("/control/user", {"account": "111111111111", "name": "ci"})
        post("/control/role", {"arn": "arn:aws:iam::222222222222:role/r", "trusted": ["111111111111"],
                               "issue_duration": 12})

        class FK:
            sts_url = urls["sts"]

            class world:
                region = urls["region"]
        st, _, body = sts_post(FK, {"Action": "AssumeRole", "Version": "2011-06-15",
                                    "RoleArn": "arn:aws:iam::222222222222:role/r", "RoleSessionName": "ci"},
                               (u["access_key_id"], u["secret_access_key"], None))
        exp = body.decode().split("<Expiration>")[1].split("<")[0] if st == 200 else ""
        c.check("control-configured role: AssumeRole -> 200 with the forced 12 s lifetime",
                st == 200 and exp and abs(time.mktime(time.strptime(exp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
                                          - time.time() - 12) < 3, f"{st} {exp}")
        st, _, b = http_request(ctl + "/control/state")
        state = json.loads(b)
        c.check("control state counts the AssumeRole", state["counters"].get("sts_issued") == 1, str(state)[:200])
        c.check("control state holds no secret", u["secret_access_key"] not in b.decode())
    finally:
        p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        err = p.stderr.read().decode()
        p.stdout.close()
        p.stderr.close()
        c.check("serve exits when stdin closes, quietly", p.returncode == 0 and not err, f"rc={p.returncode} {err[:300]}")


def main():
    c = Checks()
    fk = awsfakes.Fakes(awsfakes.World(region="us-east-1"))
    try:
        for name, fn in (("sts", check_sts), ("imds/ecs", check_imds_ecs), ("amp", check_amp)):
            try:
                fn(c, fk)
            except Exception as e:  # noqa: BLE001
                c.crashed(name, e)
    finally:
        fk.stop()
    try:
        check_serve(c)
    except Exception as e:  # noqa: BLE001
        c.crashed("serve", e)
    c.finish()


if __name__ == "__main__":
    import urllib.parse  # noqa: F401
    import botocore.config  # noqa: F401
    main()
