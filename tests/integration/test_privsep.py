"""`moongate run --user nobody` against loopback fakes of AWS (root only).

The SSM setup: root's shared credentials file (0600, in a 0700 directory)
holds the keys; moongate starts as root and drops to nobody, keeping a
helper as root that reads the file for it.

  1. The main process runs as nobody:nogroup (real, effective, saved and
     filesystem ids; no other groups); the helper is its child, still uid
     0, with no_new_privs and no capability but CAP_DAC_READ_SEARCH.
  2. nobody cannot open the credentials file (a child as nobody gets
     PermissionError), and the main process holds no descriptor of it.
  3. AMP (FakeAMP, SigV4 checked by botocore) receives writes signed with
     key 1; the file rewritten by rename (key 2), then in place (key 3):
     the next writes are signed with the new key within a few seconds, and
     the old key is no longer used.
  4. The helper killed: the main process logs an error that says what
     happened and what to do, keeps serving and sending with the keys it
     has, and exits 0 on SIGTERM. No secret in the log.
  5. A credentials file the script names but the helper does not serve
     (not known at start) is read as nobody: refused, and the error says
     which files the helper reads.
  6. Command-line errors: --user when not root, an unknown user, root
     itself, --user with `check`.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if os.geteuid() != 0:
    print("skipped: needs root (moongate run --user must start as root)")
    print("0 passed, 0 failed")
    sys.exit(0)

try:
    import pwd
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    print("skipped: needs the user nobody")
    print("0 passed, 0 failed")
    sys.exit(0)

import awsfakes as af  # noqa: E402
import mgtest as mt  # noqa: E402

REGION = "us-east-1"
CAP_DAC_READ_SEARCH = 2


def write_creds(path, key, in_place):
    text = (f"[default]\naws_access_key_id = {key.akid}\naws_secret_access_key = {key.secret}\n"
            f"aws_session_token = {key.token}\n")
    if in_place:
        with open(path, "w") as f:
            f.write(text)
    else:
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.rename(tmp, path)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            kids.append(int(d))
    return kids


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY.pw_gid)
    os.setuid(NOBODY.pw_uid)


def open_as_nobody(path):
    """In a forked child (no exec: the interpreter may live where nobody
    cannot reach) as nobody: what opening path gives."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        try:
            as_nobody()
            try:
                open(path).close()
                what = "opened"
            except Exception as e:  # noqa: BLE001
                what = type(e).__name__
        except Exception as e:  # noqa: BLE001
            what = f"setuid failed: {e}"
        os.write(wr, what.encode())
        os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        what = f.read().decode()
    os.waitpid(pid, 0)
    return what


def used(world, key):
    return world.amp_keys_used.get(key.akid, 0)


def main():
    c = mt.Checks()
    with mt.Harness("privsep") as h:
        world = af.World(REGION)
        fakes = af.Fakes(world)
        try:
            run(c, h, world, fakes)
        except Exception as e:  # noqa: BLE001
            c.crashed("privsep", e)
            h.dump_logs()
        finally:
            fakes.stop()
    c.finish()


def run(c, h, world, fakes):
    # nobody must reach the script and the Lua library, nothing else here.
    os.chmod(h.dir, 0o711)
    lua_dir = h.path("lua")
    shutil.copytree(os.path.join(mt.SOURCE_DIR, "lua"), lua_dir)
    for root, dirs, files in os.walk(lua_dir):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    home = h.path("root-home")
    os.mkdir(home, 0o700)
    os.mkdir(os.path.join(home, ".aws"), 0o700)
    creds = os.path.join(home, ".aws", "credentials")
    role = world.add_role("arn:aws:iam::111111111111:role/ssm-managed")
    keys = [world.issue(role.arn, 3600) for _ in range(4)]
    secrets = [s for k in keys for s in (k.secret, k.token)]
    write_creds(creds, keys[0], in_place=False)
    os.chmod(creds, 0o600)
    target = h.add_server(mt.FakeTarget("good"))
    script = h.write("privsep.lua", f"""local mg = require "moongate"
mg.workspace{{ name = "amp", url = "{fakes.amp_write_url}", region = "{REGION}",
  credentials = mg.aws.chain(), queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "node", interval = "500ms", timeout = "400ms", targets = {{ "{target.addr}" }} }}
""")
    os.chmod(script, 0o644)
    data = h.path("data")
    os.mkdir(data, 0o700)
    port = mt.free_port()
    env = {"HOME": home, "AWS_EC2_METADATA_DISABLED": "true", "MOONGATE_LUA_DIR": lua_dir}
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        os.environ.pop(k, None)
    mg = h.start("moongate", [mt.MOONGATE_BIN, "run", script, "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                              "--user", "nobody", "--drain-timeout", "5s"], env=env)
    base = f"http://127.0.0.1:{port}"
    mt.wait_http(base + "/-/ready", 30)

    # 1. who runs what
    st = proc_status(mg.pid)
    want_uid = [str(NOBODY.pw_uid)] * 4
    want_gid = [str(NOBODY.pw_gid)] * 4
    c.check("main process: Uid is nobody's (real, effective, saved, fs)", st["Uid"] == want_uid, str(st["Uid"]))
    c.check("main process: Gid is nogroup (real, effective, saved, fs)", st["Gid"] == want_gid, str(st["Gid"]))
    c.check("main process: no supplementary group but nobody's own",
            set(st.get("Groups", [])) <= {str(NOBODY.pw_gid)}, str(st.get("Groups")))
    c.check("main process: no capabilities", int(st["CapEff"][0], 16) == 0 and int(st["CapPrm"][0], 16) == 0,
            f"CapEff={st['CapEff']} CapPrm={st['CapPrm']}")
    kids = [k for k in children(mg.pid) if proc_status(k)["Name"] == ["moongate-creds"]]
    c.check("one helper process, a child of the main process", len(kids) == 1, str(children(mg.pid)))
    helper = kids[0] if kids else None
    if helper:
        hs = proc_status(helper)
        c.check("helper: Uid and Gid are root's", hs["Uid"] == ["0"] * 4 and hs["Gid"] == ["0"] * 4,
                f"{hs['Uid']} {hs['Gid']}")
        cap = int(hs["CapEff"][0], 16)
        c.check("helper: no capability but CAP_DAC_READ_SEARCH, no_new_privs",
                cap & ~(1 << CAP_DAC_READ_SEARCH) == 0 and int(hs["CapBnd"][0], 16) & ~(1 << CAP_DAC_READ_SEARCH) == 0
                and hs.get("NoNewPrivs") == ["1"], f"CapEff={hs['CapEff']} CapBnd={hs['CapBnd']}")
        fds = os.listdir(f"/proc/{helper}/fd")
        c.check("helper: only stdio, the socket and inotify open", len(fds) <= 5, str(fds))
    log = mg.stderr()
    dropped = mt.log_events(log, "privileges_dropped")
    c.check("log: privileges_dropped names the user and the files the helper serves",
            dropped and dropped[0].get("user") == "nobody" and creds in dropped[0].get("helper_files", ""),
            dropped[0]["_raw"] if dropped else log[-300:])
    c.check("data dir given to nobody", os.stat(data).st_uid == NOBODY.pw_uid)

    # 2. the file is out of nobody's reach
    outcome = open_as_nobody(creds)
    c.check("a process as nobody cannot open the credentials file (PermissionError)", outcome == "PermissionError",
            outcome)
    held = []
    for fd in os.listdir(f"/proc/{mg.pid}/fd"):
        try:
            held.append(os.readlink(f"/proc/{mg.pid}/fd/{fd}"))
        except OSError:
            pass
    c.check("the main process holds no descriptor of the file", creds not in held and home not in held)

    # 3. signed with key 1, then rotations are followed
    mt.wait_for("writes signed with key 1", lambda: used(world, keys[0]) > 0, 20)
    c.check("writes arrive signed with key 1", used(world, keys[0]) > 0, f"{used(world, keys[0])} requests")
    for i, (key, in_place) in enumerate(((keys[1], False), (keys[2], True)), start=2):
        t0 = time.monotonic()
        write_creds(creds, key, in_place)
        how = "in place" if in_place else "by rename"
        try:
            mt.wait_for(f"writes signed with key {i}", lambda: used(world, key) > 0, 10, 0.05)
            took = time.monotonic() - t0
        except mt.Deadline:
            took = None
        c.check(f"file rewritten {how}: writes signed with key {i} within a few seconds",
                took is not None and took < 5, f"{took:.2f} s" if took is not None else "never")
    # Two more writes with key 3: whatever was in flight with an old key has landed.
    n3 = used(world, keys[2])
    mt.wait_for("two more writes signed with key 3", lambda: used(world, keys[2]) >= n3 + 2, 10, 0.05)
    before = {k.akid: used(world, k) for k in keys[:2]}
    time.sleep(1.5)  # an observation window (three scrape intervals): no write may use an old key in it
    after = {k.akid: used(world, k) for k in keys[:2]}
    c.check("the old keys are no longer used", before == after, f"{before} -> {after}")
    c.check("no write refused", not world.amp_rejections, str(world.amp_rejections[:3]))

    # 4. the helper dies
    if helper:
        os.kill(helper, signal.SIGKILL)
        try:
            ev = mt.wait_for("helper_exited logged", lambda: mt.log_events(mg.stderr(), "helper_exited"), 10, 0.05)
        except mt.Deadline:
            ev = []
        line = ev[0] if ev else {}
        c.check("helper killed: main logs an error saying so and what to do",
                line.get("level") == "error" and "signal 9" in line.get("status", "")
                and "restart moongate" in line.get("hint", ""), line.get("_raw", "no helper_exited line"))
        c.check("the main process keeps running and serving", mg.alive() and mt.http_get(base + "/-/healthy")[0] == 200)
        n3 = used(world, keys[2])
        mt.wait_for("writes go on with the keys already read", lambda: used(world, keys[2]) > n3, 10, 0.05)
        c.check("writes go on with the keys already read", used(world, keys[2]) > n3)
        write_creds(creds, keys[3], in_place=True)
    rc, _ = mg.stop(20)
    log = mg.stderr()
    c.check("moongate exits 0 on SIGTERM", rc == 0, f"rc={rc} {log[-500:]}")
    c.check("no helper left behind", helper is None or not os.path.exists(f"/proc/{helper}"))
    c.check("no secret or token in the log", not any(s in log for s in secrets))

    # 5. a file only the script names: read as nobody, refused with a hint
    other = os.path.join(home, "other-credentials")
    write_creds(other, keys[3], in_place=False)
    script2 = h.write("other.lua", f"""local mg = require "moongate"
mg.workspace{{ name = "amp", url = "{fakes.amp_write_url}", region = "{REGION}",
  credentials = mg.aws.file{{ path = "{other}" }} }}
mg.scrape{{ job = "node", interval = "500ms", targets = {{ "{target.addr}" }} }}
""")
    os.chmod(script2, 0o644)
    port2 = mt.free_port()
    mg2 = h.start("moongate-other", [mt.MOONGATE_BIN, "run", script2, "--listen", f"127.0.0.1:{port2}",
                                     "--data-dir", h.path("data2"), "--user", "nobody", "--drain-timeout", "1s"],
                  env=env)
    try:
        ev = mt.wait_for("credentials_unavailable", lambda: mt.log_events(mg2.stderr(), "credentials_unavailable"),
                         15, 0.05)
    except mt.Deadline:
        ev = []
    msg = ev[0].get("msg", "") if ev else mg2.stderr()[-300:]
    c.check("a file the helper does not serve: permission denied, and the files it serves are named",
            f"cannot read {other}: permission denied" in msg and "privileged helper reads only" in msg, msg)
    mg2.stop(20)
    c.check("no secret in that log either", not any(s in mg2.stderr() for s in secrets))

    # 6. command-line errors
    binary = h.path("moongate-copy")  # nobody may not reach the build tree
    shutil.copy(mt.MOONGATE_BIN, binary)
    os.chmod(binary, 0o755)
    r = subprocess.run([binary, "run", script, "--user", "nobody", "--data-dir", h.path("d2")],
                       preexec_fn=as_nobody, capture_output=True, text=True, timeout=30, cwd="/")
    c.check("--user when not started as root: a clear error", r.returncode == 1 and "must be started as root"
            in r.stderr, r.stderr.strip())
    for user, want in (("no-such-user-mg", "no such user"), ("root", "is root")):
        r = subprocess.run([mt.MOONGATE_BIN, "run", script, "--user", user, "--data-dir", h.path("d3")],
                           capture_output=True, text=True, timeout=30)
        c.check(f"--user {user}: refused ({want})", r.returncode == 1 and want in r.stderr, r.stderr.strip())
    r = subprocess.run([mt.MOONGATE_BIN, "check", script, "--user", "nobody"], capture_output=True, text=True,
                       timeout=30)
    c.check("--user with check: refused", r.returncode == 2 and "run only" in r.stderr, r.stderr.strip())


if __name__ == "__main__":
    main()
