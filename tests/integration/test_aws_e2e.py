"""moongate against loopback fakes of AWS: remote_write to an AMP workspace
that checks SigV4 like AWS (botocore recomputes every signature).

  1. SSM-style rotation: a role session's keys are rewritten into the
     shared credentials file (in place, and by rename) while scraping goes
     on; each old key expires shortly after its replacement. After the
     grace period no write is refused, nothing is dropped, and the AMP
     count equals what moongate delivered.
  2. No working credentials at start (an expired key in the file): samples
     queue, nothing is dropped; when a good key appears they are delivered.
  3. Two workspaces in one process, one reached through AssumeRole (with
     an external id) into a second account whose workspace accepts only
     that role: each series reaches the right one.
  4. No secret key or session token ever appears in the logs.
"""
import os
import signal
import time

import awsfakes as af
import mgtest as mt

REGION = "us-east-1"


def write_creds(path, key, in_place):
    text = (f"[default]\naws_access_key_id = {key.akid}\naws_secret_access_key = {key.secret}\n"
            f"aws_session_token = {key.token}\n")
    if in_place:
        with open(path, "w") as f:
            f.write(text)
    else:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)


def start(h, script, env, name="moongate"):
    port = mt.free_port()
    data = h.path(name + "-data")
    os.makedirs(data, exist_ok=True)
    full = {"HOME": h.dir, "AWS_EC2_METADATA_DISABLED": "true"}
    full.update(env)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
              "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        os.environ.pop(k, None)
    pr = h.start(name, [mt.MOONGATE_BIN, "run", script, "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                        "--log-level", "info", "--drain-timeout", "15s"], env=full)
    pr.base = f"http://127.0.0.1:{port}"
    mt.wait_http(pr.base + "/-/ready", 30)
    return pr


def own(pr, name, **labels):
    return mt.metric_sum(mt.fetch_own_metrics(pr.base), name, **labels)


def rotation(c, h, fakes, world):
    role = world.add_role("arn:aws:iam::111111111111:role/ssm-managed")
    target = h.add_server(mt.FakeTarget("good"))
    creds = h.path("credentials")
    key = world.issue(role.arn, 8)
    write_creds(creds, key, True)
    secrets = [key.secret, key.token]
    script = h.write("rot.lua", f"""local mg = require "moongate"
local amp = mg.workspace{{ name = "amp", url = "{fakes.amp_write_url}", region = "{REGION}",
  credentials = mg.aws.file{{ path = "{creds}" }}, queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "node", interval = "500ms", timeout = "400ms", targets = {{ "{target.addr}" }} }}
""")
    mg = start(h, script, {})
    mt.wait_for("first accepted write", lambda: world.amp_requests_ok > 0, 20)
    rotations = 6
    for i in range(rotations):
        time.sleep(2.5)
        old = key
        key = world.issue(role.arn, 8)
        secrets += [key.secret, key.token]
        write_creds(creds, key, in_place=(i % 2 == 0))
        # The old key stays valid for a grace second, then AWS refuses it.
        time.sleep(1.0)
        old.expires = world.now() - 1
    rejected_before = len(world.amp_rejections)
    time.sleep(3)
    used = set(world.amp_keys_used)
    c.check(f"{rotations} rotations: writes signed with {len(used)} distinct keys", len(used) >= rotations,
            str(sorted(used))[:200])
    c.check("no write refused after the rotation grace periods", len(world.amp_rejections) == rejected_before,
            str(world.amp_rejections[rejected_before:][:3]))
    # Stop scraping is not possible from outside; compare at a quiet point:
    # once nothing is pending, everything scraped (+5 synthetic series per
    # scrape) was delivered and AMP counted exactly that.
    def settled():
        m = mt.fetch_own_metrics(mg.base)
        pend = mt.metric_sum(m, "moongate_remote_write_samples_pending")
        return pend == 0 and m
    m = mt.poll_until(settled, 10, 0.05)
    if m:
        sent = mt.metric_sum(m, "moongate_remote_write_samples_sent_total")
        scraped = mt.metric_sum(m, "moongate_scrape_samples_scraped_total")
        scrapes = mt.metric_sum(m, "moongate_scrapes_total")
        amp = world.amp_samples
        # AMP is read just after the snapshot: one more scrape (3 + 5
        # samples) may have been delivered in between.
        c.check("0 lost: samples scraped (+5 synthetic per scrape) == sent == accepted by AMP",
                scraped + 5 * scrapes == sent and sent <= amp <= sent + 8, f"scraped={scraped} scrapes={scrapes} "
                f"sent={sent} amp={amp}")
    else:
        c.check("queue settles to 0 pending", False)
    rc, _ = mg.stop(20)
    log = mg.stderr()
    # Delivered = accepted by AMP; nothing dropped, nothing pending at exit.
    drained = [e for e in mt.log_events(log, "drain_incomplete")]
    c.check("moongate exits 0 and delivers everything on SIGTERM", rc == 0 and not drained, f"rc={rc} {drained}")
    c.check("AMP accepted samples", world.amp_samples > 0, f"{world.amp_samples} samples")
    c.check("no secret or token in the log", not any(s in log for s in secrets))


def outage(c, h, fakes, world):
    role = world.add_role("arn:aws:iam::111111111111:role/late")
    target = h.add_server(mt.FakeTarget("good"))
    creds = h.path("credentials2")
    bad = world.issue(role.arn, 60)
    bad.expires = world.now() - 10
    write_creds(creds, bad, True)
    script = h.write("late.lua", f"""local mg = require "moongate"
mg.workspace{{ name = "amp", url = "{fakes.amp_write_url}", region = "{REGION}",
  credentials = mg.aws.file{{ path = "{creds}" }}, queue = {{ batch_send_deadline = "200ms", max_backoff = "1s" }} }}
mg.scrape{{ job = "late", interval = "500ms", timeout = "400ms", targets = {{ "{target.addr}" }} }}
""")
    ok0 = world.amp_samples
    mg = start(h, script, {}, "moongate-late")
    mt.wait_for("rejections with the expired key", lambda: any(a == bad.akid for _, a in world.amp_rejections), 20)
    time.sleep(2)
    pending = own(mg, "moongate_remote_write_samples_pending")
    dropped = own(mg, "moongate_remote_write_samples_dropped_total")
    c.check("with only expired credentials samples queue", pending > 0 and world.amp_samples == ok0,
            f"pending={pending}")
    c.check("nothing is dropped while credentials are refused", dropped == 0, f"dropped={dropped}")
    good = world.issue(role.arn, 600)
    write_creds(creds, good, False)
    mt.wait_for("queued samples delivered", lambda: own(mg, "moongate_remote_write_samples_pending") < 50
                and world.amp_samples - ok0 >= pending, 20)
    c.check("writes resume with the new credentials and deliver the backlog", world.amp_samples - ok0 >= pending,
            f"delivered {world.amp_samples - ok0} >= queued {pending}")
    c.check("auth rejections are counted", own(mg, "moongate_remote_write_auth_rejections_total") > 0)
    mg.stop(20)


def two_accounts(c, h, world):
    # Account 111's workspace takes the user's key; account 222's only its role.
    user = world.add_user("111111111111", "writer")
    role = world.add_role("arn:aws:iam::222222222222:role/amp-writer", external_id="ext-42")
    w2 = af.World(REGION)
    w2.keys = world.keys  # same IAM, another workspace that accepts only the role
    w2.roles = world.roles
    w2.lock = world.lock
    w2.amp_allowed = {role.arn}
    amp2 = af.FakeAMP(w2, workspace="ws-second")
    h.add_server(amp2)
    amp1 = af.FakeAMP(world, workspace="ws-first")
    h.add_server(amp1)
    sts = af.FakeSTS(world)
    h.add_server(sts)
    target = h.add_server(mt.FakeTarget("good"))
    script = h.write("two.lua", f"""local mg = require "moongate"
local base = mg.aws.static{{ access_key_id = "{user.akid}", secret_access_key = "{user.secret}" }}
local a = mg.workspace{{ name = "a", url = "{amp1.write_url}", region = "{REGION}", credentials = base,
  queue = {{ batch_send_deadline = "200ms" }} }}
local b = mg.workspace{{ name = "b", url = "{amp2.write_url}", region = "{REGION}",
  credentials = mg.aws.assume_role{{ role_arn = "{role.arn}", external_id = "ext-42", source = base,
    sts_endpoint = "{sts.url}" }}, queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "two", interval = "500ms", timeout = "400ms", targets = {{ "{target.addr}" }} }}
function mg.route(s)
  if s.name == "good_requests_total" then return b end
  return a
end
""")
    a0, b0 = world.amp_requests_ok, w2.amp_requests_ok
    mg = start(h, script, {}, "moongate-two")
    mt.wait_for("both workspaces written", lambda: world.amp_requests_ok > a0 and w2.amp_requests_ok > b0, 20)
    time.sleep(1)
    c.check("workspace b (account 222) accepted only role-session keys",
            all(k.startswith("ASIA") for k in w2.amp_keys_used) and w2.amp_requests_ok > 0, str(w2.amp_keys_used))
    c.check("workspace a got the user's key", user.akid in world.amp_keys_used)
    c.check("no refusals at either workspace", not w2.amp_rejections, str(w2.amp_rejections[:2]))
    log = mg.stderr()
    c.check("the static secret is not in the log", user.secret not in log)
    mg.stop(20)


def bad_signature(c, h, fakes, world):
    user = world.add_user("111111111111", "typo")
    wrong = "x" * 40
    target = h.add_server(mt.FakeTarget("good"))
    script = h.write("sig.lua", f"""local mg = require "moongate"
mg.workspace{{ name = "amp", url = "{fakes.amp_write_url}", region = "{REGION}",
  credentials = mg.aws.static{{ access_key_id = "{user.akid}", secret_access_key = "{wrong}" }},
  queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "sig", interval = "500ms", timeout = "400ms", targets = {{ "{target.addr}" }} }}
""")
    port = mt.free_port()
    data = h.path("sig-data")
    os.makedirs(data, exist_ok=True)
    mg = h.start("moongate-sig", [mt.MOONGATE_BIN, "run", script, "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                                  "--sigv4-debug", "--drain-timeout", "1s"], env={"HOME": h.dir})
    mg.base = f"http://127.0.0.1:{port}"
    mt.wait_http(mg.base + "/-/ready", 30)
    mt.wait_for("the signature debug line", lambda: mt.log_events(mg.stderr(), "sigv4_debug"), 15)
    ev = mt.log_events(mg.stderr(), "sigv4_debug")[0]
    text = ev.get("canonical_request_and_string_to_sign", "")
    rej = mt.log_events(mg.stderr(), "auth_rejected")
    c.check("a refused signature is logged with AMP's message and the masked key id",
            rej and "signature" in rej[0].get("message", "").lower() and rej[0].get("access_key_id", "")
            .endswith("****"), str(rej[:1]))
    c.check("--sigv4-debug shows the canonical request and the string to sign",
            "POST" in text and "/api/v1/remote_write" in text and "AWS4-HMAC-SHA256" in text, text[:200])
    c.check("the debug text does not contain the secret", wrong not in mg.stderr())
    c.check("nothing is dropped for a refused signature",
            own(mg, "moongate_remote_write_samples_dropped_total") == 0)
    mg.stop(5)


class STSWithIdentity(af.FakeSTS):
    """The fake STS plus GetCallerIdentity (signed, like AWS), for
    `moongate creds`."""

    def handle(self, h, method):
        import urllib.parse
        form = urllib.parse.parse_qs(h.body.decode("utf-8", "replace")) if method == "POST" else {}
        if form.get("Action", [""])[0] != "GetCallerIdentity":
            return super().handle(h, method)
        try:
            key = af.verify_sigv4(self.world, method, h.path, list(h.headers.items()), h.body, "sts",
                                  self.world.region, af.STS_CODES)
        except af.AuthError as e:
            return af.sts_error(e.status, e.code, e.message)
        xml = (f'<GetCallerIdentityResponse xmlns="{af.STS_NS}"><GetCallerIdentityResult>'
               f"<Arn>{key.principal}</Arn><UserId>{key.akid}</UserId><Account>{key.account}</Account>"
               "</GetCallerIdentityResult></GetCallerIdentityResponse>").encode()
        return 200, {"Content-Type": "text/xml"}, xml


def creds_command(c, h, world):
    role = world.add_role("arn:aws:iam::333333333333:role/reader", external_id="e9")
    user = world.add_user("333333333333", "ops")
    sts = h.add_server(STSWithIdentity(world))
    creds = h.path("cli-credentials")
    with open(creds, "w") as f:
        f.write(f"[ops]\naws_access_key_id = {user.akid}\naws_secret_access_key = {user.secret}\n")
    env = dict(os.environ, HOME=h.dir, AWS_ENDPOINT_URL_STS=sts.url, AWS_EC2_METADATA_DISABLED="true")
    import subprocess
    r = subprocess.run([mt.MOONGATE_BIN, "creds", "--profile", "ops", "--credentials-file", creds, "--region",
                        REGION], capture_output=True, text=True, timeout=60, env=env)
    c.check("moongate creds: profile resolves and STS names the caller",
            r.returncode == 0 and "user/ops" in r.stdout and user.akid[:4] + "****" in r.stdout, r.stdout + r.stderr)
    c.check("moongate creds never prints the secret", user.secret not in r.stdout + r.stderr)
    r = subprocess.run([mt.MOONGATE_BIN, "creds", "--profile", "ops", "--credentials-file", creds, "--role-arn",
                        role.arn, "--external-id", "e9", "--region", REGION], capture_output=True, text=True,
                       timeout=60, env=env)
    c.check("moongate creds --role-arn: the assumed role's session is the caller",
            r.returncode == 0 and "assumed-role/reader" in r.stdout and "expires:" in r.stdout, r.stdout + r.stderr)
    r = subprocess.run([mt.MOONGATE_BIN, "creds", "--profile", "nobody", "--credentials-file", creds],
                       capture_output=True, text=True, timeout=60, env=env)
    c.check("moongate creds with a missing profile fails with a reason", r.returncode != 0 and "nobody" in r.stderr,
            r.stderr)


def main():
    c = mt.Checks()
    with mt.Harness("aws-e2e") as h:
        world = af.World(REGION)
        fakes = af.Fakes(world)
        try:
            for name, fn in (("rotation", lambda: rotation(c, h, fakes, world)),
                             ("outage", lambda: outage(c, h, fakes, world)),
                             ("two accounts", lambda: two_accounts(c, h, world)),
                             ("bad signature", lambda: bad_signature(c, h, fakes, world)),
                             ("creds command", lambda: creds_command(c, h, world))):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    c.crashed(name, e)
                    h.dump_logs()
        finally:
            fakes.stop()
    c.finish()


if __name__ == "__main__":
    main()
