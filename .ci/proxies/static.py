"""What the deploy/ files must keep saying, checked without pulling an image or reaching a cluster.

usage: static.py DEPLOY_DIR CARGO_TOML      prints one line per file; exit 1 on the first broken promise

Kubernetes manifests, docker-compose.yml, fly.toml, the Dockerfile and the systemd unit: parsed, then
held to the points deploy/README.md relies on (probes, non-root, read-only root, data volume, drain
time above the server's, unbuffered streaming annotations, the same PUBLIC_URL host everywhere).
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib
from urllib.parse import urlparse

import yaml

# The server's drain on SIGTERM: SHUTDOWN_GRACE_SECS (default 10) for requests in flight, then up to 5 s
# for background tasks (src/app.rs). Every stop timeout must leave room for both.
TASKS_SECS = 5
DEFAULT_GRACE = 10
CARGO_TOML = pathlib.Path("Cargo.toml")


class Broken(Exception):
    pass


def need(cond: object, msg: str) -> None:
    if not cond:
        raise Broken(msg)


def seconds(v: object) -> float:
    """30, "30", "30s", "1m30s", "1h" -> seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", s)
    need(parts and "".join(a + b for a, b in parts) == s, f"not a duration: {v!r}")
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(a) * unit[b] for a, b in parts)


def env_list(env: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in env or []}


def k8s(d: pathlib.Path) -> str:
    d = d / "k8s"
    kust = yaml.safe_load((d / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {p.name for p in d.glob("*.yaml")} - {"kustomization.yaml"}
    need(listed == files, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(files)}")
    docs = [doc for p in sorted(d.glob("*.yaml")) if p.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(p.read_text()) if doc]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        need("apiVersion" in doc and "kind" in doc and doc.get("metadata", {}).get("name"), f"incomplete object: {doc}")
        by_kind.setdefault(doc["kind"], []).append(doc)
    (dep,) = by_kind["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = env_list(c.get("env"))
    need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz")
    need(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz")
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    need(psc.get("runAsNonRoot") or csc.get("runAsNonRoot"), "not runAsNonRoot")
    need(csc.get("readOnlyRootFilesystem") is True, "root filesystem not read-only")
    need(csc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    need("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities not dropped")
    need(env.get("BIND") == "0.0.0.0", "BIND is not 0.0.0.0")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    db = env.get("DATABASE_URL", "")
    need(db.startswith("sqlite:///"), f"DATABASE_URL {db!r} is not an absolute sqlite path")
    db_dir = str(pathlib.PurePosixPath(db.removeprefix("sqlite://")).parent)
    need(db_dir in mounts, f"DATABASE_URL's directory {db_dir} is not a mounted volume")
    vols = {v["name"]: v for v in spec["volumes"]}
    data = vols[mounts[db_dir]]
    need("persistentVolumeClaim" in data or "emptyDir" in data, "the data volume is neither a PVC nor an emptyDir")
    if "persistentVolumeClaim" in data:
        claims = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
        need(data["persistentVolumeClaim"]["claimName"] in claims, "the data PVC is not among the manifests")
        need(dep["spec"].get("replicas", 1) == 1, "more than one replica on a ReadWriteOnce SQLite volume")
    grace = float(env.get("SHUTDOWN_GRACE_SECS", DEFAULT_GRACE))
    tgp = spec.get("terminationGracePeriodSeconds", 30)
    need(tgp > grace + TASKS_SECS, f"terminationGracePeriodSeconds {tgp} <= SHUTDOWN_GRACE_SECS {grace} + {TASKS_SECS}")
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    need(refs and all(r in secrets for r in refs), f"envFrom secret {refs} not among the manifests")
    (svc,) = by_kind["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    need(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service does not select the pods")
    ports = {p.get("name") for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
    need(all(p["targetPort"] in ports for p in svc["spec"]["ports"]), "the Service's targetPort is not a container port")
    (ing,) = by_kind["Ingress"]
    a = ing["metadata"].get("annotations", {})
    need(a.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "Ingress: proxy-buffering is not off")
    for t in ("proxy-read-timeout", "proxy-send-timeout"):
        need(int(a.get(f"nginx.ingress.kubernetes.io/{t}", "60")) >= 3600, f"Ingress: {t} under an hour")
    (rule,) = ing["spec"]["rules"]
    host = urlparse(env["PUBLIC_URL"]).hostname
    need(rule["host"] == host, f"Ingress host {rule['host']} is not PUBLIC_URL's host {host}")
    need(any(host in t.get("hosts", []) for t in ing["spec"].get("tls", [])), "Ingress: no TLS for the host")
    backend = rule["http"]["paths"][0]["backend"]["service"]
    need(backend["name"] == svc["metadata"]["name"], "Ingress backend is not the Service")
    return f"k8s: {len(docs)} objects; probes, non-root read-only pod, {tgp}s > {grace:g}+{TASKS_SECS}s drain, ingress unbuffered"


def compose(d: pathlib.Path) -> str:
    c = yaml.safe_load((d / "docker-compose.yml").read_text())
    app, caddy = c["services"]["voice-call-mcp"], c["services"]["caddy"]
    need((d / app["build"]["context"] / app["build"]["dockerfile"]).resolve() == (d / "Dockerfile").resolve(),
         "the build does not use deploy/Dockerfile with the repository as context")
    env = app["environment"]
    need(env.get("BIND") == "0.0.0.0", "BIND is not 0.0.0.0")
    db_dir = str(pathlib.PurePosixPath(env["DATABASE_URL"].removeprefix("sqlite://")).parent)
    need(any(v.split(":")[1] == db_dir for v in app["volumes"]), f"{db_dir} is not a volume")
    need(seconds(app.get("stop_grace_period", "10s")) > DEFAULT_GRACE + TASKS_SECS, "stop_grace_period too short")
    need(app.get("read_only") is True, "the server's root filesystem is writable")
    need("ports" not in app, "the server publishes a port past Caddy")
    need(caddy["depends_on"]["voice-call-mcp"]["condition"] == "service_healthy", "caddy does not wait for health")
    need(any(v.startswith("./Caddyfile:") for v in caddy["volumes"]), "caddy does not mount deploy/Caddyfile")
    need("${PUBLIC_URL" in str(caddy["environment"]["SITE_ADDRESS"]), "SITE_ADDRESS is not PUBLIC_URL")
    return "docker-compose.yml: build, volume, drain, Caddy on PUBLIC_URL"


def fly(d: pathlib.Path) -> str:
    f = tomllib.loads((d / "fly.toml").read_text())
    env = f["env"]
    need(env.get("BIND") == "0.0.0.0", "BIND is not 0.0.0.0")
    need(f["http_service"]["internal_port"] == int(env.get("PORT", 8080)), "internal_port is not PORT")
    mounts = f["mounts"] if isinstance(f["mounts"], list) else [f["mounts"]]
    db_dir = str(pathlib.PurePosixPath(env["DATABASE_URL"].removeprefix("sqlite://")).parent)
    need(any(m["destination"] == db_dir for m in mounts), f"{db_dir} is not a mounted volume")
    need(seconds(f["kill_timeout"]) > DEFAULT_GRACE + TASKS_SECS, "kill_timeout too short")
    paths = {ch["path"] for ch in f["http_service"].get("checks", [])}
    need({"/healthz", "/readyz"} <= paths, f"http checks {paths}")
    need(urlparse(env["PUBLIC_URL"]).scheme == "https", "PUBLIC_URL is not https")
    return "fly.toml: checks, volume, kill_timeout"


def dockerfile(d: pathlib.Path) -> str:
    text = (d / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    need(len(froms) >= 2 and " AS " in froms[0].upper(), "not a multi-stage build")
    final = lines[lines.index(froms[-1]):]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    need(users and users[-1].split(":")[0] not in ("0", "root"), "the final image runs as root")
    need(any(ln.upper().startswith("HEALTHCHECK") and "/healthz" in ln for ln in final), "no HEALTHCHECK on /healthz")
    need(any(ln.upper().startswith("VOLUME") and "/data" in ln for ln in final), "no VOLUME /data")
    need(re.search(r"\bBIND=0\.0\.0\.0\b", text), "BIND=0.0.0.0 not set")
    need("DATABASE_URL=sqlite:///data/" in text, "DATABASE_URL does not point into /data")
    need("ca-certificates" in text, "no CA certificates in the final image (Twilio and OpenAI are https)")
    # Cargo refuses a manifest whose declared [[bench]]/[[example]]/[[test]] file is missing: the
    # dependency-caching build (and the real one, which copies only src/) must make a stub for each.
    cargo = tomllib.loads(CARGO_TOML.read_text())
    for kind, folder in (("bench", "benches"), ("example", "examples"), ("test", "tests")):
        for target in cargo.get(kind, []):
            path = target.get("path", f"{folder}/{target['name']}.rs")
            need(text.count(path) >= 2, f"Cargo.toml declares {kind} {path}; the Dockerfile's stub builds lack it")
    ignore = (d / "Dockerfile.dockerignore").read_text().split()
    need("*" in ignore and {"!Cargo.toml", "!Cargo.lock", "!src/"} <= set(ignore), "Dockerfile.dockerignore")
    return f"Dockerfile: {len(froms)} stages, non-root ({users[-1]}), HEALTHCHECK, VOLUME /data"


def systemd(d: pathlib.Path) -> str:
    unit = (d / "systemd" / "voice-call-mcp.service").read_text()
    m = re.search(r"^TimeoutStopSec=(\S+)", unit, re.M)
    need(m and seconds(m.group(1)) > DEFAULT_GRACE + TASKS_SECS, "TimeoutStopSec missing or too short")
    return f"systemd: TimeoutStopSec={m.group(1)}"


def main() -> int:
    global CARGO_TOML
    d = pathlib.Path(sys.argv[1]).resolve()
    CARGO_TOML = pathlib.Path(sys.argv[2])
    for check in (k8s, compose, fly, dockerfile, systemd):
        try:
            print(check(d))
        except Broken as e:
            print(f"{check.__name__}: {e}")
            return 1
        except (KeyError, ValueError, TypeError, yaml.YAMLError, tomllib.TOMLDecodeError) as e:
            print(f"{check.__name__}: cannot read: {type(e).__name__}: {e}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
