"""test_deploy: the deployment files are what they claim to be. Owns the
temp files, moongate and Prometheus processes it starts (loopback only);
must not change the files it checks.

Checks deploy/kubernetes/*.yaml (parsed; required fields; image args run
moongate on 0.0.0.0:9464; probes on /-/healthy and /-/ready; non-root,
read-only root, no capabilities; resources; the data dir mounted; env from the
downward API; every ConfigMap script passes `moongate check` with the env its
manifest gives it; run for real: the StatefulSet's shards, with its relabel
rules and with --shard, split a target list exactly as Prometheus's hashmod
would; the Deployment signs for AMP with IRSA's web identity, against the
loopback AWS fakes) and
deploy/grafana/moongate.json (valid dashboard; every metric name in every
PromQL expression is listed in docs/metrics.md).

YAML is read with a small parser for the block-style subset these files use
(python3-yaml is not a test dependency); when PyYAML is importable, both
parsers must agree on every file. Ends with `N passed, M failed`.
"""
import glob
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import Checks, log  # noqa: E402

SRC = mgtest.SOURCE_DIR
K8S = os.path.join(SRC, "deploy", "kubernetes")
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "moongate.json")
METRICS_MD = os.path.join(SRC, "docs", "metrics.md")

NAMESPACE = "moongate"
API_VERSIONS = {"Namespace": "v1", "ServiceAccount": "v1", "ConfigMap": "v1", "Service": "v1",
                "Deployment": "apps/v1", "DaemonSet": "apps/v1", "StatefulSet": "apps/v1"}
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
# What the downward API gives each fieldRef, for running the scripts here.
FIELD_VALUES = {"status.hostIP": "10.0.0.1", "spec.nodeName": "ip-10-0-0-1.ec2.internal",
                "status.podIP": "10.0.1.5", "metadata.namespace": NAMESPACE,
                "metadata.labels['apps.kubernetes.io/pod-index']": "0"}


# ---------------------------------------------------------------- YAML subset

class YamlError(Exception):
    pass


def _strip_comment(s):
    """Drop a ` #` comment outside quotes."""
    q = None
    for i, ch in enumerate(s):
        if q:
            if ch == q:
                q = None
        elif ch in "\"'" and (i == 0 or s[i - 1] in " [{:,"):
            q = ch
        elif ch == "#" and (i == 0 or s[i - 1] in " \t"):
            return s[:i].rstrip()
    return s.rstrip()


def _scalar(s, where):
    s = s.strip()
    if s == "" or s in ("~", "null"):
        return None
    if s[0] == '"':
        if not s.endswith('"') or len(s) < 2:
            raise YamlError(f"{where}: unterminated double-quoted string")
        return json.loads(s)
    if s[0] == "'":
        if not s.endswith("'") or len(s) < 2:
            raise YamlError(f"{where}: unterminated single-quoted string")
        return s[1:-1].replace("''", "'")
    if s in ("[]", "{}"):
        return [] if s == "[]" else {}
    if s[0] in "[{&*!|>%@`":
        raise YamlError(f"{where}: {s[0]!r} is outside the YAML subset these files use")
    if s in ("true", "false"):
        return s == "true"
    if re.fullmatch(r"[-+]?[0-9]+", s):
        return int(s)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", s):
        return float(s)
    return s


def _split_key(s, where):
    m = re.match(r'^("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^:#\'"][^:]*?)\s*:(\s+|$)(.*)$', s)
    if not m:
        return None
    key = _scalar(m.group(1), where)
    return str(key), m.group(3)


class _Lines:
    def __init__(self, text, name):
        self.name = name
        self.raw = text.split("\n")
        self.items = []  # (lineno, indent, content) of non-blank, non-comment lines
        for n, line in enumerate(self.raw, 1):
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise YamlError(f"{name}:{n}: tab in indentation")
            body = line.strip()
            if not body or body.startswith("#"):
                continue
            self.items.append((n, len(line) - len(line.lstrip(" ")), line.strip()))


def _block_scalar(lines, pos, parent_indent, header, where):
    """Literal block (| or |-) starting after the line at items[pos-1]."""
    if header not in ("|", "|-"):
        raise YamlError(f"{where}: block scalar {header!r} is outside the subset (use | or |-)")
    start_line = lines.items[pos - 1][0]  # 1-based line of the key
    out, n, ind = [], start_line, None
    while n < len(lines.raw):
        line = lines.raw[n]
        if line.strip():
            cur = len(line) - len(line.lstrip(" "))
            if cur <= parent_indent:
                break
            if ind is None:
                ind = cur
            if cur < ind:
                raise YamlError(f"{lines.name}:{n + 1}: block scalar line less indented than its first line")
            out.append(line[ind:])
        else:
            out.append("")
        n += 1
    while out and out[-1] == "":
        out.pop()
    text = "\n".join(out) + ("\n" if out and header == "|" else "")
    while pos < len(lines.items) and lines.items[pos][0] <= n:
        pos += 1
    return text, pos


def _node(lines, pos, indent):
    """Parse the block node whose lines start at items[pos] with this indent."""
    n, ind, content = lines.items[pos]
    where = f"{lines.name}:{n}"
    if ind != indent:
        raise YamlError(f"{where}: expected indent {indent}, got {ind}")
    if content == "-" or content.startswith("- "):
        return _seq(lines, pos, indent)
    if _split_key(content, where):
        return _map(lines, pos, indent)
    return _scalar(_strip_comment(content), where), pos + 1


def _value_after_key(lines, pos, indent, rest, where):
    """The value of `key: rest` whose line is items[pos-1]."""
    rest = _strip_comment(rest)
    if rest.startswith("|"):
        return _block_scalar(lines, pos, indent, rest, where)
    if rest:
        return _scalar(rest, where), pos
    if pos < len(lines.items):
        _, nind, ncontent = lines.items[pos]
        if nind > indent or (nind == indent and (ncontent == "-" or ncontent.startswith("- "))):
            return _node(lines, pos, nind)
    return None, pos


def _map(lines, pos, indent):
    out = {}
    while pos < len(lines.items):
        n, ind, content = lines.items[pos]
        where = f"{lines.name}:{n}"
        if ind < indent:
            break
        if ind > indent:
            raise YamlError(f"{where}: unexpected indent")
        kv = _split_key(content, where)
        if not kv:
            if content.startswith("- "):
                break
            raise YamlError(f"{where}: expected 'key: value'")
        key, rest = kv
        if key in out:
            raise YamlError(f"{where}: duplicate key {key!r}")
        out[key], pos = _value_after_key(lines, pos + 1, indent, rest, where)
    return out, pos


def _seq(lines, pos, indent):
    out = []
    while pos < len(lines.items):
        n, ind, content = lines.items[pos]
        where = f"{lines.name}:{n}"
        if ind != indent or not (content == "-" or content.startswith("- ")):
            if ind > indent:
                raise YamlError(f"{where}: unexpected indent")
            break
        rest = content[1:].lstrip(" ")
        inner = indent + (len(content) - len(rest))
        if not rest:
            if pos + 1 < len(lines.items) and lines.items[pos + 1][1] > indent:
                v, pos = _node(lines, pos + 1, lines.items[pos + 1][1])
            else:
                v, pos = None, pos + 1
            out.append(v)
            continue
        if _split_key(rest, where):
            # "- key: v" opens a mapping whose keys sit at `inner`.
            lines.items[pos] = (n, inner, rest)
            v, pos = _map(lines, pos, inner)
        else:
            v, pos = _scalar(_strip_comment(rest), where), pos + 1
        out.append(v)
    return out, pos


def yaml_subset_load_all(text, name="<yaml>"):
    docs, cur = [], []
    for line in text.split("\n"):
        if line.rstrip() == "---":
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    out = []
    for d in docs:
        lines = _Lines(d, name)
        if not lines.items:
            continue
        v, pos = _node(lines, 0, lines.items[0][1])
        if pos != len(lines.items):
            raise YamlError(f"{name}:{lines.items[pos][0]}: trailing content at the wrong indent")
        out.append(v)
    return out


def load_yaml(c, path):
    rel = os.path.relpath(path, SRC)
    with open(path) as f:
        text = f.read()
    try:
        docs = yaml_subset_load_all(text, rel)
    except YamlError as e:
        c.check(f"{rel}: parses", False, str(e))
        return []
    c.check(f"{rel}: parses", True, f"{len(docs)} document(s)")
    try:
        import yaml  # noqa: PLC0415 - optional cross-check
    except ImportError:
        return docs
    ref = [d for d in yaml.safe_load_all(text) if d is not None]
    c.check(f"{rel}: PyYAML reads the same documents", ref == docs,
            "" if ref == docs else _first_diff(ref, docs))
    return docs


def _first_diff(a, b, path="$"):
    if type(a) is not type(b):
        return f"{path}: {a!r:.80} vs {b!r:.80}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'PyYAML' if k in a else 'subset parser'}"
            d = _first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {a!r:.80} vs {b!r:.80}"


def yaml_self_test(c):
    """The subset parser on the constructs the manifests rely on."""
    text = ('a: 1\nb: "x: y # no comment"\nc:  # comment\n  - d\n  - e: f\n    g: \'h\'\ni:\n- j\n'
            'k: |\n  line 1\n    indented\n\n  line 3\nl: true\nm: "3"\nn: 2Gi\no: metadata.labels[\'x/y\']\n')
    want = {"a": 1, "b": "x: y # no comment", "c": ["d", {"e": "f", "g": "h"}], "i": ["j"],
            "k": "line 1\n  indented\n\nline 3\n", "l": True, "m": "3", "n": "2Gi", "o": "metadata.labels['x/y']"}
    try:
        got = yaml_subset_load_all(text)
    except YamlError as e:
        got = [str(e)]
    c.check("yaml subset parser: maps, lists, quoting, comments, literal blocks", got == [want], f"{got}")
    bad_ok = 0
    for bad in ("a: [1, 2]\n", "a:\n\tb: 1\n", "a: 1\na: 2\n", "a: >\n  x\n"):
        try:
            yaml_subset_load_all(bad)
        except YamlError:
            bad_ok += 1
    c.check("yaml subset parser refuses flow collections, tabs, duplicate keys, folded blocks", bad_ok == 4,
            f"{bad_ok}/4 refused")


# ---------------------------------------------------------------- manifests

def dig(d, *path, default=None):
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return default
    return d


def quantity(s):
    """Kubernetes quantity -> float (cores or bytes)."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?", str(s))
    if not m:
        return None
    mult = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3}
    return float(m.group(1)) * mult[m.group(2)]


def check_common(c, rel, doc):
    kind = doc.get("kind")
    name = dig(doc, "metadata", "name")
    tag = f"{rel}: {kind}/{name}"
    c.check(f"{tag}: apiVersion {API_VERSIONS.get(kind)}", kind in API_VERSIONS
            and doc.get("apiVersion") == API_VERSIONS[kind], f"{doc.get('apiVersion')}")
    c.check(f"{tag}: metadata.name is a DNS label", bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name or "")))
    if kind != "Namespace":
        c.check(f"{tag}: namespace {NAMESPACE}", dig(doc, "metadata", "namespace") == NAMESPACE)
    if kind in WORKLOADS or kind == "Service":
        c.check(f"{tag}: has spec", isinstance(doc.get("spec"), dict))
    return tag


def container_env(ctr, pod_name):
    """The container's environment as the kubelet would give it (fieldRefs
    filled with sample values)."""
    env = {}
    for e in ctr.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            fp = dig(e, "valueFrom", "fieldRef", "fieldPath")
            env[e["name"]] = pod_name if fp == "metadata.name" else FIELD_VALUES.get(fp)
    return env


def run_check(env, script_text, name):
    with tempfile.TemporaryDirectory(prefix="mg-deploy-") as d:
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(script_text)
        full = {k: v for k, v in os.environ.items() if k not in ("REMOTE_WRITE_URL", "AMP_REGION", "SHARD", "SHARDS")}
        full.update({k: v for k, v in env.items() if v is not None})
        r = subprocess.run([mgtest.MOONGATE_BIN, "check", p], capture_output=True, text=True, timeout=60,
                           env=full, cwd=d)
        return r.returncode, r.stdout + r.stderr


def check_workload(c, rel, doc, configmaps, serviceaccounts):
    kind, name = doc["kind"], dig(doc, "metadata", "name")
    tag = f"{rel}: {kind}/{name}"
    spec = doc.get("spec") or {}
    pod = dig(spec, "template", "spec") or {}
    labels = dig(spec, "template", "metadata", "labels") or {}
    sel = dig(spec, "selector", "matchLabels") or {}
    c.check(f"{tag}: selector matches the pod labels", sel and all(labels.get(k) == v for k, v in sel.items()),
            f"{sel} vs {labels}")
    sa = pod.get("serviceAccountName")
    c.check(f"{tag}: serviceAccountName names the IRSA ServiceAccount", sa in serviceaccounts, f"{sa}")
    psc = pod.get("securityContext") or {}
    c.check(f"{tag}: pod runAsNonRoot, uid/gid 10001",
            psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001 and psc.get("runAsGroup") == 10001,
            f"{psc}")
    ctrs = pod.get("containers") or []
    if not c.check(f"{tag}: exactly one container", len(ctrs) == 1, f"{len(ctrs)}"):
        return
    ctr = ctrs[0]
    image = ctr.get("image") or ""
    c.check(f"{tag}: image has a tag", bool(re.search(r"^[^\s]+:[\w][\w.-]*$", image.split("/")[-1] if image else "")),
            image)
    args = ctr.get("args") or []
    c.check(f"{tag}: args start with run <script>", args[:1] == ["run"] and len(args) > 1, f"{args}")
    li = args.index("--listen") if "--listen" in args else -1
    c.check(f"{tag}: --listen 0.0.0.0:9464", li >= 0 and args[li + 1:li + 2] == ["0.0.0.0:9464"], f"{args}")
    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports") or []}
    c.check(f"{tag}: containerPort 9464 named http", ports.get("http") == 9464, f"{ports}")
    for probe, path in (("startupProbe", "/-/healthy"), ("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        hg = dig(ctr, probe, "httpGet") or {}
        c.check(f"{tag}: {probe} GET {path}", hg.get("path") == path and hg.get("port") in ("http", 9464), f"{hg}")
    res = ctr.get("resources") or {}
    rc, rm = quantity(dig(res, "requests", "cpu")), quantity(dig(res, "requests", "memory"))
    lc, lm = quantity(dig(res, "limits", "cpu")), quantity(dig(res, "limits", "memory"))
    c.check(f"{tag}: resources within CPU 100m-500m, memory 64-256Mi, requests <= limits",
            None not in (rc, rm, lc, lm) and 0.1 <= rc <= lc <= 0.5 and 64 * 2 ** 20 <= rm <= lm <= 256 * 2 ** 20,
            f"{res}")
    csc = ctr.get("securityContext") or {}
    c.check(f"{tag}: readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL",
            csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
            and "ALL" in (dig(csc, "capabilities", "drop") or []), f"{csc}")
    # Volumes: the script's ConfigMap and the data dir.
    mounts = {m.get("mountPath"): m.get("name") for m in ctr.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    claims = {dig(t, "metadata", "name") for t in spec.get("volumeClaimTemplates") or []}
    di = args.index("--data-dir") if "--data-dir" in args else -1
    data_dir = args[di + 1] if 0 <= di < len(args) - 1 else None
    dvol = mounts.get(data_dir)
    c.check(f"{tag}: --data-dir {data_dir} is a mounted emptyDir or PVC",
            dvol is not None and (dvol in claims or "emptyDir" in vols.get(dvol, {})
                                  or "persistentVolumeClaim" in vols.get(dvol, {})), f"mount {dvol}")
    dt = args[args.index("--drain-timeout") + 1] if "--drain-timeout" in args else "10s"
    m = re.fullmatch(r"([0-9]+)s", dt)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    c.check(f"{tag}: terminationGracePeriodSeconds ({grace}) > --drain-timeout ({dt})",
            m is not None and grace > int(m.group(1)))
    script_path = args[1] if len(args) > 1 else ""
    cm_name = dig(vols.get(mounts.get(os.path.dirname(script_path)), {}), "configMap", "name")
    cm = configmaps.get(cm_name)
    key = os.path.basename(script_path)
    script = dig(cm or {}, "data", key)
    if not c.check(f"{tag}: {script_path} comes from ConfigMap {cm_name} key {key}", isinstance(script, str)):
        return
    pod_name = f"{name}-0" if kind == "StatefulSet" else f"{name}-7d9f8c6b5-x2x4q"
    env = container_env(ctr, pod_name)
    refs = {e["name"]: dig(e, "valueFrom", "fieldRef", "fieldPath") for e in ctr.get("env") or [] if "valueFrom" in e}
    unknown = [f"{k}={v}" for k, v in refs.items() if v not in FIELD_VALUES and v != "metadata.name"]
    c.check(f"{tag}: env fieldRefs are downward-API fields", not unknown, ", ".join(unknown))
    read = set(re.findall(r'mg\.env\("([A-Za-z_][A-Za-z0-9_]*)"\)', script))
    unused = sorted(set(env) - read)
    c.check(f"{tag}: every env var set is read by the script", not unused, f"unused: {unused}; read: {sorted(read)}")
    check_script(c, tag, kind, spec, env, script, key)


def check_script(c, tag, kind, spec, env, script, key):
    rc, out = run_check(env, script, key)
    c.check(f"{tag}: script passes `moongate check` with the manifest's env (AMP, SigV4)",
            rc == 0 and 'service="aps"' in out, (out.strip().splitlines() or [""])[-1])
    plain = dict(env, AMP_REGION=None, REMOTE_WRITE_URL="http://127.0.0.1:9/api/v1/write")
    rc2, out2 = run_check(plain, script, key)
    c.check(f"{tag}: script passes `moongate check` unsigned (AMP_REGION unset)", rc2 == 0,
            (out2.strip().splitlines() or [""])[-1])
    if kind == "DaemonSet":
        want = FIELD_VALUES["status.hostIP"] + ":9100"
        c.check(f"{tag}: the plan scrapes node-exporter at NODE_IP:9100 ({want})", want in out2)
    if kind == "StatefulSet":
        c.check(f"{tag}: SHARDS == spec.replicas", str(spec.get("replicas")) == env.get("SHARDS"),
                f"SHARDS={env.get('SHARDS')} replicas={spec.get('replicas')}")
        old = dict(plain, SHARD="", POD_NAME=f"{tag.split('/')[-1]}-2")
        rc3, out3 = run_check(old, script, key)
        c.check(f"{tag}: without the pod-index label the shard comes from POD_NAME", rc3 == 0,
                (out3.strip().splitlines() or [""])[-1])
        bad = dict(plain, SHARD=str(spec.get("replicas")))
        rc4, out4 = run_check(bad, script, key)
        c.check(f"{tag}: SHARD >= SHARDS is refused at load", rc4 != 0 and "SHARD" in out4,
                (out4.strip().splitlines() or [""])[-1])


def prometheus_hashmod(value, modulus):
    """Prometheus relabel hashmod: md5, low 8 bytes big-endian, modulo."""
    return struct.unpack(">Q", hashlib.md5(value.encode()).digest()[8:])[0] % modulus


def _workload(docs, kind):
    return next((d for _, d in docs if d.get("kind") == kind), None)


def _start_gw(h, name, script_path, env, extra=()):
    port = mgtest.free_port()
    gw = h.start(name, [mgtest.MOONGATE_BIN, "run", script_path, "--listen", f"127.0.0.1:{port}",
                        "--data-dir", h.path(f"{name}-data"), *extra], env=env)
    gw.base = f"http://127.0.0.1:{port}"
    return gw


def _job_targets(gw, job):
    """How many targets of a job this moongate scrapes (moongate_targets, up + down)."""
    m = mgtest.fetch_own_metrics(gw.base)
    return int(sum(v for k, v in m.items() if dict(k).get("__name__") == "moongate_targets"
                   and dict(k).get("job") == job))


def check_live(c, docs, configmaps):
    """The manifests' scripts, run for real (all at once, so the waits for
    first scrapes overlap):
      * the StatefulSet's shards, once with the script's hashmod relabel rules
        and once with --shard POD_NAME/SHARDS instead: together they scrape
        each fleet target once, each where Prometheus's hashmod puts it;
      * the Deployment with AMP_REGION set and IRSA's environment
        (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE), against loopback fakes of
        STS and an AMP workspace that checks SigV4 like AWS."""
    sts, dep = _workload(docs, "StatefulSet"), _workload(docs, "Deployment")
    with mgtest.Harness("deploy-live") as h:
        variants = []
        if sts:
            name = dig(sts, "metadata", "name")
            ctr = dig(sts, "spec", "template", "spec", "containers", 0)
            shards = int(dig(sts, "spec", "replicas"))
            script = dig(configmaps.get(name) or {}, "data", "moongate.lua") or ""
            flagged = script.replace(", relabel_configs = this_shard", "")
            c.check("sharding: the StatefulSet script shards its fleet job with relabel rules",
                    "relabel_configs = this_shard" in script and flagged != script)
            for label, text, flag in (("relabel rules", script, False), ("--shard", flagged, True)):
                rx = h.add_server(mgtest.FakeReceiver())
                path = h.write(f"shard-{int(flag)}.lua", text)
                gws = []
                for k in range(shards):
                    pod = f"{name}-{k}"
                    env = {e: v for e, v in container_env(ctr, pod).items() if v is not None}
                    # Unsigned, to the fake receiver; "" counts as unset in the script.
                    env.update(SHARD=str(k), AMP_REGION="", REMOTE_WRITE_URL=rx.write_url, POD_IP="127.0.0.1")
                    extra = ("--shard", f"{pod}/{shards}") if flag else ()
                    gws.append(_start_gw(h, f"shard{int(flag)}-{k}", path, env, extra))
                variants.append((label, rx, gws, shards))
        irsa = None
        if dep:
            irsa = start_irsa(c, h, dep, configmaps)
        for _, _, gws, _ in variants:
            for gw in gws:
                mgtest.wait_http(gw.base + "/-/ready", 30)
        for label, rx, gws, shards in variants:
            instances = set()

            def all_up():
                instances.update(dict(key)["instance"] for key in rx.find("up", job="fleet"))
                return len(instances) >= 100
            ok = mgtest.poll_until(all_up, 75, 0.5)
            counts = [_job_targets(gw, "fleet") for gw in gws]
            want = [0] * shards
            for t in instances:
                want[prometheus_hashmod(t, shards)] += 1
            c.check(f"sharding ({label}): the shards together scrape all 100 fleet targets",
                    bool(ok) and len(instances) == 100, f"{len(instances)} targets seen at the receiver")
            c.check(f"sharding ({label}): each shard scrapes exactly the targets Prometheus's hashmod gives it",
                    counts == want and sum(counts) == len(instances), f"per shard {counts}, hashmod predicts {want}")
            for gw in gws:
                mgtest.stop_gateway(c, f"sharding ({label}): {gw.name} exits 0 on SIGTERM", gw)
        if irsa:
            finish_irsa(c, *irsa)


def start_irsa(c, h, dep, configmaps):
    """The Deployment's script in AMP form, credentials from IRSA's web
    identity token through the default chain, against the AWS fakes."""
    try:
        import awsfakes  # noqa: PLC0415 - needs python3-botocore (a test dependency)
    except ImportError as e:
        c.check("IRSA: awsfakes importable (python3-botocore)", False, str(e))
        return None
    name = dig(dep, "metadata", "name")
    ctr = dig(dep, "spec", "template", "spec", "containers", 0)
    script = dig(configmaps.get(name) or {}, "data", "moongate.lua") or ""
    sa = dig(dep, "spec", "template", "spec", "serviceAccountName")
    env = {e: v for e, v in container_env(ctr, f"{name}-0").items() if v is not None}
    fakes = awsfakes.Fakes(awsfakes.World(region=env.get("AMP_REGION") or "us-east-1"))
    h.add_server(fakes)
    world = fakes.world
    role = "arn:aws:iam::111122223333:role/moongate-amp-writer"
    world.add_role(role, web_identity=True)
    world.amp_allowed = {role}          # the workspace accepts only the IRSA role
    token = world.add_web_token(subject=f"system:serviceaccount:{NAMESPACE}:{sa}")
    tok = h.write("irsa-token", token)
    # What EKS's pod identity webhook adds, plus the fakes' endpoints.
    env.update(REMOTE_WRITE_URL=fakes.amp_write_url, POD_IP="127.0.0.1", HOME=h.dir, AWS_ROLE_ARN=role,
               AWS_WEB_IDENTITY_TOKEN_FILE=tok, AWS_ENDPOINT_URL_STS=fakes.sts_url, AWS_EC2_METADATA_DISABLED="true")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        os.environ.pop(k, None)
    path = h.write("irsa.lua", script)
    gw = _start_gw(h, "irsa", path, env)
    return gw, world, role, [token]


def finish_irsa(c, gw, world, role, secrets):
    ok = mgtest.poll_until(lambda: world.amp_samples > 0, 60, 0.5)
    roles = {(world.lookup(a).role if world.lookup(a) else a) for a in world.amp_keys_used}
    c.check("IRSA: the Deployment's script (AMP_REGION set) writes to a SigV4-checking AMP fake",
            bool(ok), f"{world.amp_samples} samples accepted, rejections {world.amp_rejections[:3]}")
    c.check("IRSA: every accepted write was signed by the ServiceAccount's role (web identity via STS)",
            bool(ok) and roles == {role}, f"{roles}")
    log = gw.stderr()
    ready = [e for e in mgtest.log_events(log, "credentials_ready")]
    c.check("IRSA: log names the credential source, no token in the log",
            bool(ready) and not any(s in log for s in secrets), ready[0]["_raw"] if ready else "no credentials_ready")
    mgtest.stop_gateway(c, "IRSA: moongate exits 0 on SIGTERM", gw)


def check_manifests(c):
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    c.check("deploy/kubernetes has the manifests",
            {os.path.basename(f) for f in files} >= {"namespace.yaml", "serviceaccount.yaml", "deployment.yaml",
                                                     "daemonset.yaml", "statefulset.yaml"},
            ", ".join(os.path.basename(f) for f in files))
    all_docs = [(os.path.relpath(f, SRC), d) for f in files for d in load_yaml(c, f)]
    for rel, d in all_docs:
        if not isinstance(d, dict):
            c.check(f"{rel}: every document is a mapping", False, f"{type(d).__name__}")
    all_docs = [(r, d) for r, d in all_docs if isinstance(d, dict)]
    configmaps = {dig(d, "metadata", "name"): d for _, d in all_docs if d.get("kind") == "ConfigMap"}
    sas = {}
    for rel, d in all_docs:
        check_common(c, rel, d)
        if d.get("kind") == "ServiceAccount":
            arn = dig(d, "metadata", "annotations", "eks.amazonaws.com/role-arn") or ""
            c.check(f"{rel}: ServiceAccount annotated for IRSA (eks.amazonaws.com/role-arn)",
                    bool(re.fullmatch(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+", arn)), arn)
            sas[dig(d, "metadata", "name")] = d
    kinds = [d.get("kind") for _, d in all_docs]
    for k in WORKLOADS:
        c.check(f"a {k} is provided", k in kinds)
    for rel, d in all_docs:
        if d.get("kind") in WORKLOADS:
            check_workload(c, rel, d, configmaps, sas)
    templates = [dig(d, "spec", "template", "metadata", "labels") or {} for _, d in all_docs if d.get("kind") in WORKLOADS]
    for rel, d in all_docs:
        if d.get("kind") == "Service":
            sel = dig(d, "spec", "selector") or {}
            c.check(f"{rel}: Service/{dig(d, 'metadata', 'name')} selects a workload's pods",
                    any(sel and all(t.get(k) == v for k, v in sel.items()) for t in templates), f"{sel}")
    return all_docs, configmaps


# ---------------------------------------------------------------- dashboard

PROMQL_WORDS = {
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "sum", "avg", "min", "max", "count", "topk",
    "bottomk", "quantile", "stddev", "stdvar", "count_values", "group", "histogram_quantile", "time",
    "timestamp", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "label_replace",
    "label_join", "vector", "scalar", "absent", "absent_over_time", "changes", "resets", "sort", "sort_desc",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "present_over_time", "quantile_over_time", "predict_linear", "sgn", "exp", "ln",
    "log2", "log10", "sqrt",
    # keywords
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}


def promql_metric_names(expr):
    """Metric names in a PromQL expression: identifiers that are not
    functions/keywords, label names in braces or grouping lists, strings,
    durations or Grafana variables."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    s = re.sub(r"\{[^{}]*\}", "{}", s)                                   # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r"\1()", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)                                   # ranges, subqueries
    s = re.sub(r"\$\{?\w+\}?", "", s)                                    # $__rate_interval, ${job}
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w.])", s):
        w = m.group(1)
        if w.lower() in PROMQL_WORDS:
            continue
        if s[m.end():].lstrip().startswith("("):   # a function not listed above
            continue
        names.add(w)
    return names


def documented_metrics():
    names = set()
    with open(METRICS_MD) as f:
        for line in f:
            m = re.match(r"\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|", line)
            if m:
                names.add(m.group(1))
    return names


def dashboard_exprs(dash):
    out = []

    def walk(v, where):
        if isinstance(v, dict):
            for k, x in v.items():
                if k in ("expr", "query") and isinstance(x, str) and x.strip():
                    out.append((where, x))
                elif k == "definition" and isinstance(x, str) and x.strip():
                    out.append((where, x))
                else:
                    walk(x, f"{where}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                title = x.get("title") if isinstance(x, dict) else None
                walk(x, f"{where}[{title or i}]")
    walk(dash, "$")
    return out


def variable_query_metric(q):
    """label_values(metric, label) / label_values(label) -> metric or None."""
    m = re.match(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*,", q)
    return m.group(1) if m else None


def check_dashboard(c):
    rel = os.path.relpath(DASHBOARD, SRC)
    try:
        with open(DASHBOARD) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        c.check(f"{rel}: valid JSON", False, str(e))
        return
    c.check(f"{rel}: valid JSON", True)
    c.check(f"{rel}: has title, uid, schemaVersion, panels",
            all(dash.get(k) for k in ("title", "uid", "schemaVersion", "panels")))
    panels = []

    def collect(ps):
        for p in ps:
            panels.append(p)
            collect(p.get("panels") or [])
    collect(dash.get("panels") or [])
    ids = [p.get("id") for p in panels]
    c.check(f"{rel}: panel ids unique", len(ids) == len(set(ids)) and None not in ids, f"{ids}")
    graphs = [p for p in panels if p.get("type") != "row"]
    no_target = [p.get("title") for p in graphs if not p.get("targets")]
    c.check(f"{rel}: every panel has a query", not no_target, f"{no_target}")
    overlap = []
    boxes = [(p.get("title"), p.get("gridPos") or {}) for p in panels]
    for i, (t1, a) in enumerate(boxes):
        for t2, b in boxes[i + 1:]:
            if (a.get("x", 0) < b.get("x", 0) + b.get("w", 0) and b.get("x", 0) < a.get("x", 0) + a.get("w", 0)
                    and a.get("y", 0) < b.get("y", 0) + b.get("h", 0) and b.get("y", 0) < a.get("y", 0) + a.get("h", 0)):
                overlap.append(f"{t1} / {t2}")
    c.check(f"{rel}: panels do not overlap", not overlap, "; ".join(overlap[:5]))
    c.check(f"{rel}: every panel fits the 24-column grid",
            all(0 <= (p.get("gridPos") or {}).get("x", -1) and (p["gridPos"]["x"] + p["gridPos"].get("w", 0)) <= 24
                for p in panels if "gridPos" in p) and all("gridPos" in p for p in panels))
    docs = documented_metrics()
    c.check("docs/metrics.md lists metrics", len(docs) >= 10, f"{len(docs)} names")
    exprs = dashboard_exprs(dash)
    c.check(f"{rel}: has PromQL expressions", len(exprs) >= 10, f"{len(exprs)}")
    used, unknown = set(), []
    for where, e in exprs:
        if where.startswith("$.templating"):
            m = variable_query_metric(e)
            names = {m} if m else set()
        else:
            names = promql_metric_names(e)
        if not names and not where.startswith("$.templating"):
            unknown.append(f"{where}: no metric in {e!r}")
        for n in names:
            base = n
            used.add(base)
            if base not in docs:
                unknown.append(f"{where}: {base} in {e!r}")
    c.check(f"{rel}: every metric in every expression is in docs/metrics.md", not unknown,
            "; ".join(unknown[:6]))
    log(f"dashboard uses {len(used)} metrics: {', '.join(sorted(used))}")
    # The dashboard covers what an operator looks at first.
    for must in ("moongate_scrapes_total", "moongate_targets", "moongate_scrape_samples_scraped_total",
                 "moongate_remote_write_samples_sent_total", "moongate_remote_write_samples_pending",
                 "moongate_remote_write_samples_dropped_total", "moongate_remote_write_retries_total",
                 "moongate_remote_write_requests_total", "process_resident_memory_bytes",
                 "process_cpu_seconds_total", "moongate_lua_errors_total",
                 "moongate_remote_write_auth_rejections_total", "moongate_aws_credentials_expiry_timestamp_seconds"):
        c.check(f"{rel}: shows {must}", must in used)
    # Label names used in matchers and groupings exist on the metric.
    labels = documented_labels()
    bad = []
    for where, e in exprs:
        for metric, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", e):
            for ln in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                if metric in labels and ln not in labels[metric] | {"instance", "job"}:
                    bad.append(f"{metric}{{{ln}}}")
    c.check(f"{rel}: label matchers use labels the metric has (docs/metrics.md)", not bad, ", ".join(sorted(set(bad))))
    self_test_promql(c)


def documented_labels():
    out = {}
    with open(METRICS_MD) as f:
        for line in f:
            cells = [x.strip() for x in line.replace("\\|", "/").strip().strip("|").split("|")]
            if len(cells) >= 3 and re.fullmatch(r"`[a-zA-Z_:][a-zA-Z0-9_:]*`", cells[0]):
                out[cells[0].strip("`")] = set(re.findall(r"(?:^|,\s*)([a-z_]+)", re.sub(r"`[^`]*`", "", cells[2])))
    return out


def self_test_promql(c):
    cases = {
        'sum by (job) (rate(moongate_scrapes_total{result="failure",job=~"$job"}[$__rate_interval]))':
            {"moongate_scrapes_total"},
        "process_resident_memory_bytes{job=\"moongate\"} / 2^20": {"process_resident_memory_bytes"},
        "histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m]))) or on() vector(0)": {"x_bucket"},
        "sum(a) / ignoring(code) group_left sum(b:rate5m)": {"a", "b:rate5m"},
    }
    bad = [f"{e!r} -> {promql_metric_names(e)}" for e, want in cases.items() if promql_metric_names(e) != want]
    c.check("promql name extraction self-test", not bad, "; ".join(bad))


def grafana_vars(expr):
    """The dashboard's variables as Grafana would fill them for one moongate
    scraped by Prometheus with default settings."""
    return (expr.replace("$__rate_interval", "5s").replace("${job_label}", "exported_job")
            .replace("$job_label", "exported_job").replace("$instance", ".*"))


def check_dashboard_live(c):
    """Every dashboard query, run by a real Prometheus that scrapes a running
    moongate (which scrapes a fake target and a closed port, writes to a fake
    receiver and, signed, to the AMP fake that refuses one request, and has a
    hook that fails): each must be valid PromQL, and each panel must show
    data."""
    with open(DASHBOARD) as f:
        exprs = [(w, e) for w, e in dashboard_exprs(json.load(f)) if not w.startswith("$.templating")]
    with mgtest.Harness("deploy-dashboard") as h:
        import awsfakes  # noqa: PLC0415 - needs python3-botocore (a test dependency)
        rx = h.add_server(mgtest.FakeReceiver())
        tgt = h.add_server(mgtest.FakeTarget("good"))
        fakes = h.add_server(awsfakes.Fakes())
        role = "arn:aws:iam::111122223333:role/dashboard"
        fakes.world.add_role(role, web_identity=True)
        tok = h.write("token", fakes.world.add_web_token())
        # One AMP refusal of an expired token, for the credentials row.
        fakes.world.fail["amp"] = [(403, "ExpiredTokenException", "The security token included in the request is expired")]
        script = h.write("dash.lua", f"""local mg = require "moongate"
mg.global {{ scrape_interval = "1s", scrape_timeout = "900ms" }}
mg.remote_write {{ name = "rx", url = "{rx.write_url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.workspace {{ name = "amp", region = "{fakes.world.region}", url = "{fakes.amp_write_url}",
  credentials = mg.aws.web_identity {{ role_arn = "{role}", token_file = "{tok}", sts_endpoint = "{fakes.sts_url}" }},
  queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape {{ job = "app", targets = {{ "{tgt.addr}", "127.0.0.1:{mgtest.free_port()}" }} }}
-- one failing hook, so the Lua errors panel has something to show
function mg.filter(s) if s.name == "good_gauge" then error("dashboard test") end return true end
""")
        gw = mgtest.start_moongate(h, script)
        port = mgtest.free_port()
        yml = h.write("prom.yml", f"""global: {{ scrape_interval: 1s, scrape_timeout: 900ms }}
scrape_configs:
  - job_name: moongate
    static_configs: [{{ targets: ["{gw.base[len('http://'):]}"] }}]
""")
        data = h.path("prom-data")
        os.makedirs(data)
        prom = h.start("prometheus", [mgtest.PROMETHEUS_BIN, f"--config.file={yml}", f"--storage.tsdb.path={data}",
                                      f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
        api = mgtest.PromAPI(f"http://127.0.0.1:{port}")
        mgtest.wait_http(api.base + "/-/ready", 60)
        ok = mgtest.poll_until(lambda: api.query(
            'sum(rate(moongate_remote_write_samples_sent_total[5s])) > 0'), 30, 0.5)
        c.check("dashboard live: Prometheus has two scrapes of moongate with samples sent", bool(ok))
        empty, errors = [], []
        for where, e in exprs:
            q = grafana_vars(e)
            try:
                res = api.query(q)
            except Exception as ex:  # noqa: BLE001 - Prometheus' parse error text
                errors.append(f"{where}: {q!r}: {str(ex)[:200]}")
                continue
            if not res:
                empty.append(f"{where}: {q}")
        c.check("dashboard live: every query is valid PromQL for Prometheus", not errors, "; ".join(errors[:4]))
        c.check("dashboard live: every query returns data", not empty, "; ".join(empty[:6]))
        mgtest.stop_gateway(c, "dashboard live: moongate exits 0 on SIGTERM", gw)
        prom.stop()


def main():
    c = Checks()
    why = mgtest.moongate_usable()
    yaml_self_test(c)
    try:
        docs, cms = check_manifests(c)
    except Exception as e:  # noqa: BLE001
        c.crashed("manifests", e)
        docs, cms = [], {}
    if why:
        c.check("moongate binary usable for the script checks", False, why)
    else:
        try:
            check_live(c, docs, cms)
        except Exception as e:  # noqa: BLE001
            c.crashed("live", e)
    try:
        check_dashboard(c)
    except Exception as e:  # noqa: BLE001
        c.crashed("dashboard", e)
    if not why:
        try:
            check_dashboard_live(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("dashboard live", e)
    c.finish()


if __name__ == "__main__":
    main()
