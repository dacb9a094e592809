"""EC2 discovery (ec2_sd_configs) end to end, against the loopback FakeEC2
of awsfakes (SigV4 service "ec2" checked like AWS by botocore's signer):

  1. prometheus.yml with static keys and a tag filter: the matching
     instances (private IP 127.0.0.1, port from a tag through relabeling)
     are scraped, __meta_ec2_tag_Name becomes a label, the zone id comes
     from DescribeAvailabilityZones; an instance removed from EC2 goes
     stale after a refresh, a new one is scraped; throttling keeps the
     targets, counts moongate_sd_refresh_failures_total{kind="ec2"} and is
     logged once; `moongate check` and the logs never show the secret.
  2. A Lua script with a profile from a shared credentials file (as SSM
     writes it): the session expires, EC2 answers RequestExpired, targets
     are kept; when the file holds new keys, discovery recovers.
  3. botocore's own EC2 client agrees with the fake (pages, filters,
     errors), so the fake is EC2 as an SDK sees it.
"""
import os

import awsfakes as af
import mgtest as mt

REGION = "us-east-1"


def up_of(rx, name):
    return rx.find("up", ec2_name=name)


def last_is_stale(rx, name):
    pts = [p for pts in up_of(rx, name).values() for p in pts]
    return bool(pts) and mt.is_stale_nan(sorted(pts)[-1][1])


def own(pr, name, **labels):
    return mt.metric_sum(mt.fetch_own_metrics(pr.base), name, **labels)


def logs(pr):
    return pr.stdout() + pr.stderr()


def start(h, config, name, env):
    full = {"HOME": h.dir, "AWS_EC2_METADATA_DISABLED": "true"}
    full.update(env)
    port = mt.free_port()
    data = h.path(name + "-data")
    os.makedirs(data, exist_ok=True)
    pr = h.start(name, [mt.MOONGATE_BIN, "run", config, "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                        "--log-level", "info"], env=full)
    pr.base = f"http://127.0.0.1:{port}"
    mt.wait_http(pr.base + "/-/ready", 30)
    return pr


def yml_static(c, h, world, fakes):
    user = world.add_user(name="discovery")
    targets = {n: h.add_server(mt.FakeTarget("good")) for n in ("web-a", "web-b", "web-c", "db")}
    ids = {}
    for n in ("web-a", "web-b", "db"):
        ids[n] = world.add_instance(private_ip="127.0.0.1", tags={"Name": n, "Port": str(targets[n].port),
                                                                   "Env": "dev" if n == "db" else "prod"})["id"]
    world.add_instance(private_ip=None, state="stopped", tags={"Name": "old", "Env": "prod"})
    world.ec2_page_size = 2  # EC2 may answer with fewer instances than MaxResults
    rx = h.add_server(mt.FakeReceiver())
    yml = h.write("ec2.yml", f"""global:
  scrape_interval: 1s
  scrape_timeout: 800ms
scrape_configs:
  - job_name: ec2
    ec2_sd_configs:
      - region: {REGION}
        endpoint: {fakes.ec2_url}
        access_key: {user.akid}
        secret_key: {user.secret}
        refresh_interval: 1s
        port: 9
        filters:
          - name: tag:Env
            values: [prod]
    relabel_configs:
      - source_labels: [__meta_ec2_private_ip, __meta_ec2_tag_Port]
        separator: ":"
        target_label: __address__
      - source_labels: [__meta_ec2_tag_Name]
        target_label: ec2_name
      - source_labels: [__meta_ec2_instance_id]
        target_label: instance_id
      - source_labels: [__meta_ec2_availability_zone_id]
        target_label: az_id
remote_write:
  - url: {rx.write_url}
    queue_config:
      batch_send_deadline: 200ms
""")
    rc, out = check_cmd(yml)
    c.check("moongate check accepts ec2_sd_configs and masks secret_key",
            rc == 0 and "secret_key: <secret>" in out and user.secret not in out, "" if rc == 0 else out[-300:])
    pr = start(h, yml, "moongate-yml", {})
    mt.wait_for("web-a and web-b scraped", lambda: up_of(rx, "web-a") and up_of(rx, "web-b"), 30)
    keys = list(up_of(rx, "web-a"))
    labels = dict(keys[0]) if keys else {}
    c.check("labels from relabeling: ec2_name from __meta_ec2_tag_Name, instance id, zone id, address from the tag",
            labels.get("job") == "ec2" and labels.get("instance") == targets["web-a"].addr and
            labels.get("instance_id") == ids["web-a"] and labels.get("az_id") == "use1-az1", labels)
    c.check("no __meta_* label reaches the receiver", not any(k.startswith("__meta") for k in labels))
    c.check("the filter applies: db (Env=dev) is not scraped", not up_of(rx, "db") and targets["db"].requests == 0,
            f"db requests={targets['db'].requests}")
    with world.lock:
        reqs = list(world.ec2_requests)
        rejected = list(world.ec2_rejections)
    di = [p for a, p, _ in reqs if a == "DescribeInstances"]
    c.check("DescribeInstances signed (SigV4 ec2, none refused) with the filter and MaxResults",
            di and not rejected and di[0].get("Filter.1.Name") == "tag:Env" and di[0].get("Filter.1.Value.1") == "prod"
            and di[0].get("MaxResults"), f"{len(di)} requests, rejected={rejected}, first={di[:1]}")
    c.check("two instances per page: the second page asked for with NextToken and the same filter",
            any(p.get("NextToken") and p.get("Filter.1.Value.1") == "prod" for p in di))
    c.check("DescribeAvailabilityZones asked once",
            sum(1 for a, _, _ in reqs if a == "DescribeAvailabilityZones") == 1)

    # An instance goes away, another arrives.
    world.remove_instance(ids["web-b"])
    world.add_instance(private_ip="127.0.0.1", tags={"Name": "web-c", "Port": str(targets["web-c"].port),
                                                     "Env": "prod"})
    mt.wait_for("web-b stale", lambda: last_is_stale(rx, "web-b"), 20)
    c.check("removed instance: up{ec2_name=web-b} ends with a staleness marker", True)
    mt.wait_for("web-c scraped", lambda: up_of(rx, "web-c"), 20)
    c.check("new instance web-c is scraped after a refresh", True)
    n_b = targets["web-b"].requests
    n_a = targets["web-a"].requests
    mt.wait_for("two more scrapes of web-a", lambda: targets["web-a"].requests >= n_a + 2, 10)
    c.check("web-b is no longer scraped", targets["web-b"].requests <= n_b + 1,
            f"{n_b} -> {targets['web-b'].requests}")

    # Throttling: targets kept, failures counted, one log line.
    with world.lock:
        world.fail["ec2"] = [(503, "RequestLimitExceeded", "Request limit exceeded.")] * 3
    mt.wait_for("3 failed refreshes counted",
                lambda: own(pr, "moongate_sd_refresh_failures_total", kind="ec2") >= 3, 20)
    n_a = targets["web-a"].requests
    mt.wait_for("web-a still scraped", lambda: targets["web-a"].requests >= n_a + 2, 10)
    c.check("throttled: targets kept (web-a scraped on, not stale)", not last_is_stale(rx, "web-a"))
    log = logs(pr)
    c.check("throttling logged once with EC2's code and message",
            log.count("code=RequestLimitExceeded") == 1 and "Request limit exceeded." in log,
            f"{log.count('code=RequestLimitExceeded')} lines")
    mt.wait_for("recovered", lambda: "event=refresh_recovered" in logs(pr), 10)
    c.check("recovery logged", True)
    rc, _ = pr.stop()
    log = logs(pr)
    c.check("moongate exits 0", rc == 0, f"rc={rc}")
    c.check("the secret key never appears in the logs", user.secret not in log)


def check_cmd(yml):
    import subprocess
    p = subprocess.run([mt.MOONGATE_BIN, "check", yml], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def write_creds(path, key):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"[disco]\naws_access_key_id = {key.akid}\naws_secret_access_key = {key.secret}\n"
                f"aws_session_token = {key.token}\n")
    os.rename(tmp, path)


def lua_profile_rotation(c, h, world, fakes):
    role = world.add_role("arn:aws:iam::111111111111:role/ec2-discovery")
    t = h.add_server(mt.FakeTarget("good"))
    world.add_instance(private_ip="127.0.0.1", tags={"Name": "lua-a", "Port": str(t.port), "Env": "lua"})
    rx = h.add_server(mt.FakeReceiver())
    creds = h.path("credentials")
    key1 = world.issue(role.arn, 6)
    write_creds(creds, key1)
    script = h.write("ec2.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "rx", url = "{rx.write_url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "ec2lua", interval = "1s", timeout = "800ms",
  ec2_sd = {{ region = "{REGION}", endpoint = "{fakes.ec2_url}", profile = "disco", refresh_interval = "1s",
             filters = {{ {{ name = "tag:Env", values = {{ "lua" }} }} }} }},
  relabel_configs = {{
    {{ source_labels = {{ "__meta_ec2_private_ip", "__meta_ec2_tag_Port" }}, separator = ":",
      target_label = "__address__" }},
    {{ source_labels = {{ "__meta_ec2_tag_Name" }}, target_label = "ec2_name" }},
  }} }}
""")
    pr = start(h, script, "moongate-lua", {"AWS_SHARED_CREDENTIALS_FILE": creds})
    mt.wait_for("lua-a scraped", lambda: up_of(rx, "lua-a"), 30)
    c.check("Lua ec2_sd with a profile: instance scraped with name from its tag", True)
    mt.wait_for("the session expired and EC2 said RequestExpired",
                lambda: "code=RequestExpired" in logs(pr), 30)
    fails = own(pr, "moongate_sd_refresh_failures_total", kind="ec2")
    n = t.requests
    mt.wait_for("scrapes go on", lambda: t.requests >= n + 2, 10)
    c.check("expired credentials: refresh fails, targets kept", fails >= 1 and not last_is_stale(rx, "lua-a"),
            f"failures={fails}")
    with world.lock:
        refused = [code for code, akid in world.ec2_rejections if akid == key1.akid]
    c.check("EC2 refused the expired session with RequestExpired", "RequestExpired" in refused, refused[:3])
    key2 = world.issue(role.arn, 3600)
    write_creds(creds, key2)
    mt.wait_for("recovered with the new keys", lambda: "event=refresh_recovered" in logs(pr), 20)
    with world.lock:
        used2 = sum(1 for a, _, akid in world.ec2_requests if a == "DescribeInstances" and akid == key2.akid)
    c.check("discovery recovers once the file holds new keys (DescribeInstances with them)", used2 >= 1, used2)
    log = logs(pr)
    c.check("RequestExpired logged once", log.count("code=RequestExpired") == 1, log.count("code=RequestExpired"))
    rc, _ = pr.stop()
    log = logs(pr)
    c.check("no secret key or token in the logs",
            all(s not in log for s in (key1.secret, key1.token[:40], key2.secret, key2.token[:40])))
    c.check("moongate exits 0", rc == 0, f"rc={rc}")


def botocore_agrees(c, world, fakes):
    import botocore.exceptions
    import botocore.session
    user = world.add_user(name="sdk")
    s = botocore.session.get_session()
    cl = s.create_client("ec2", region_name=REGION, endpoint_url=fakes.ec2_url, aws_access_key_id=user.akid,
                         aws_secret_access_key=user.secret)
    got = []
    for page in cl.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag:Env", "Values": ["pr?d", "lua"]}], PaginationConfig={"PageSize": 5}):
        for r in page["Reservations"]:
            got += [i["InstanceId"] for i in r["Instances"]]
    with world.lock:
        want = [i["id"] for i in world.ec2_instances if i["tags"].get("Env") in ("prod", "lua")]
    c.check("botocore's paginator reads the fake's pages and filters (wildcards)", got == want, f"{got} vs {want}")
    zones = cl.describe_availability_zones()["AvailabilityZones"]
    c.check("botocore reads DescribeAvailabilityZones", zones and zones[0]["ZoneId"] == "use1-az1", zones[:1])
    bad = s.create_client("ec2", region_name=REGION, endpoint_url=fakes.ec2_url, aws_access_key_id=user.akid,
                          aws_secret_access_key="x" * 40)
    try:
        bad.describe_instances()
        code = None
    except botocore.exceptions.ClientError as e:
        code = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    c.check("a wrong secret key: 403 SignatureDoesNotMatch", code == ("SignatureDoesNotMatch", 403), code)


def main():
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]  # moongate must see only what each sub-test gives it
    c = mt.Checks()
    with mt.Harness("sd_ec2") as h:
        world = af.World(region=REGION)
        fakes = af.Fakes(world)
        h.add_server(fakes)
        for name, fn in (("prometheus.yml, static keys", lambda: yml_static(c, h, world, fakes)),
                         ("Lua, profile with rotation", lambda: lua_profile_rotation(c, h, world, fakes)),
                         ("botocore", lambda: botocore_agrees(c, world, fakes))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - one sub-test failing must not hide the others
                c.crashed(name, e)
                h.dump_logs()
    c.finish()


if __name__ == "__main__":
    main()
