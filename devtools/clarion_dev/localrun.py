"""`clarion dev up|down`: the whole system on one machine, no Docker.

`up` starts (or reuses) the local control plane, Postgres and Redis, the Telegram Bot API emulator, the
SMTP sink, then the operator, the webhook and the pod runner (which runs the bot Deployment's pods and
the sender Jobs' pods as local processes). It applies the example channel, lets a few hundred emulated
users press /start (emulator -> webhook -> Redis stream -> bot -> Postgres), applies a campaign to them
and shows its progress until it is finished, then prints where to look. `down` stops all of it.

With `--telegram-token` and `--public-url` the channel talks to the real Telegram instead of the
emulator (no emulated users are created then; subscribers come from real /start messages).

With `--node` (root; docs/control-plane.md) the control plane gets a real node, and every Clarion
process runs in a container of the image scripts/build-image.sh builds: `helm upgrade --install` puts
the chart on the node with its bundled Postgres and Redis, the operator and the webhook, and the
operator's bot Deployment and sender Jobs run there too. Only the emulator and the SMTP sink stay on
the host, listening on the node's bridge address where pods reach them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CLARION_LOCAL_DIR", "/var/tmp/clarion/local"))  # noqa: S108 - dev state
NAMESPACE = "clarion-demo"
CHANNEL = "demo-bot"
CAMPAIGN = "hello-subscribers"
DEMO_TOKEN = "700000001:clarion-local-demo-token-0123456789abcdef"
EMULATOR_PORT = 8081
RELEASE, RELEASE_NAMESPACE = "clarion", "clarion-system"
WEBHOOK_PORT = 8080
OPERATOR_HEALTH_PORT = 8090
SMTP_PORT = 2525
FINAL_PHASES = {"Completed", "PartiallyFailed", "Failed", "Cancelled"}
# Processes started by `up`, stopped in reverse order by `down`.
PROCESS_ORDER = ["telegram", "smtp", "webhook", "operator", "podrunner"]


def _say(message: str) -> None:
    print(f"clarion: {message}", flush=True)


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _service_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "scripts/local-services.sh"), "start"],
                         check=True, capture_output=True, text=True).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return env


def _cluster(args: list[str]) -> None:
    from clarion_dev.cluster.cli import main as cluster_main

    code = cluster_main(args)
    if code:
        raise SystemExit(f"clarion dev cluster {' '.join(args)} failed ({code})")


def _kubeconfig() -> Path:
    from clarion_dev.cluster.cli import DEFAULT_STATE_DIR

    return DEFAULT_STATE_DIR / "kubeconfig"


def _pidfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def _alive(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
    if _alive(name):
        _say(f"{name} already running (pid {_alive(name)})")
        return
    (STATE / "pids").mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    log = (STATE / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, start_new_session=True, cwd=REPO)
    _pidfile(name).write_text(str(proc.pid))
    _say(f"started {name} (pid {proc.pid}, log {STATE / 'logs' / (name + '.log')})")


def _wait(what: str, check: Callable[[], bool], timeout: float, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, subprocess.CalledProcessError, ValueError):
            pass
        time.sleep(0.25)
    hint = f"; see {STATE / 'logs' / log}" if log else ""
    raise SystemExit(f"clarion: timed out after {timeout:.0f}s waiting for {what}{hint}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URLs we built
        return bool(200 <= resp.status < 300)


_host = "127.0.0.1"  # where the emulator and the SMTP sink listen: the node's bridge address with --node


def _emulator(path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(f"http://{_host}:{EMULATOR_PORT}/_emulator/{path}",
                                 data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())["result"]


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    from clarion_dev.cluster.launcher import find_binaries

    kubectl = str(find_binaries() / "kubectl")
    result = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
    return result.stdout


def _apply(kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    _kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump_all(docs))


def _get(kubeconfig: Path, kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_kubectl(kubeconfig, "get", kind, name, "-n", NAMESPACE, "-o", "json"))
    return data


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _channel_docs(token: str, api_base: str, public_url: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{CHANNEL}-token"},
         "type": "Opaque", "stringData": {"token": token}},
        {"apiVersion": "clarion.io/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": CHANNEL},
         "spec": {"type": "telegram", "telegram": {
             "botTokenSecretRef": {"name": f"{CHANNEL}-token", "key": "token"},
             "apiBaseUrl": api_base,
             "webhook": {"url": public_url, "maxConnections": 40},
             "rateLimits": {"globalPerSecond": 30, "perChatPerSecond": 1, "perGroupPerMinute": 20},
             "defaultLanguage": "en",
             "bot": {"replicas": 2}}}},
    ]


def _campaign_doc() -> dict[str, Any]:
    return {"apiVersion": "clarion.io/v1alpha1", "kind": "BroadcastCampaign", "metadata": {"name": CAMPAIGN},
            "spec": {"channelRef": {"name": CHANNEL},
                     "message": {"text": "Hello from Clarion! This broadcast was sent by a sender Job.",
                                 "variants": [{"language": "ru", "text": "Привет от Clarion!"}]},
                     "audience": {"allSubscribers": True},
                     "delivery": {"parallelism": 2, "batchSize": 50, "maxAttempts": 5}}}


def _count_subscribers(dsn: str) -> int:
    psql = shutil.which("psql") or "psql"
    query = ("SELECT count(*) FROM subscribers s JOIN channels c ON c.id = s.channel_id"
             " WHERE c.namespace = :'ns' AND c.name = :'ch' AND s.subscribed")
    out = subprocess.run([psql, dsn, "-At", "-v", f"ns={NAMESPACE}", "-v", f"ch={CHANNEL}"], input=query,
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip() or 0)


def _seed_users(count: int, dsn: str) -> None:
    """Emulated users press /start; a few block the bot afterwards (they count as blocked)."""
    start_id = 500_000
    _emulator("users", {"count": count, "start_id": start_id, "token": DEMO_TOKEN, "seed": 7})
    for i in range(count):
        _emulator("user_sends", {"token": DEMO_TOKEN, "user_id": start_id + i, "text": "/start"})
    _wait(f"{count} subscribers (emulator -> webhook -> stream -> bot -> Postgres)",
          lambda: _count_subscribers(dsn) >= count, 180, "podrunner.log")
    for i in range(0, count, 25):  # silently blocked: the campaign finds out with a 403
        _emulator("set_blocked", {"token": DEMO_TOKEN, "user_id": start_id + i, "blocked": True})
    _say(f"{count} subscribers in Postgres; {len(range(0, count, 25))} of them blocked the bot since")


def _follow_campaign(kubeconfig: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status: dict[str, Any] = dict(_get(kubeconfig, "broadcastcampaign", CAMPAIGN).get("status", {}))
        except subprocess.CalledProcessError:
            status = {}
        line = (f"{status.get('phase', '?'):<15} sent {status.get('sent', 0)}/{status.get('total', 0)}"
                f"  blocked {status.get('blocked', 0)}  failed {status.get('failed', 0)}"
                f"  {status.get('progress', 0)}%  {status.get('ratePerSecond', 0)} msg/s")
        if line != last:
            print(f"  {line}", flush=True)
            last = line
        if status.get("phase") in FINAL_PHASES:
            return status
        time.sleep(1)
    raise SystemExit(f"clarion: campaign not finished after {timeout:.0f}s; see {STATE / 'logs'}")


def up(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="clarion dev up", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=300, help="emulated users who press /start")
    parser.add_argument("--telegram-token", default=os.environ.get("CLARION_DEMO_BOT_TOKEN"),
                        help="a real bot token: talk to Telegram instead of the emulator")
    parser.add_argument("--telegram-api", default="https://api.telegram.org")
    parser.add_argument("--public-url", default=os.environ.get("CLARION_PUBLIC_URL"),
                        help="public base URL of the webhook (needed with a real token)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the campaign")
    parser.add_argument("--node", action="store_true",
                        help="a real node: everything in containers of the built images (root)")
    args = parser.parse_args(list(argv))
    real = bool(args.telegram_token)
    if real and not args.public_url:
        parser.error("--telegram-token needs --public-url (Telegram must reach the webhook)")
    started = time.monotonic()
    global _host

    if args.node:
        from clarion_dev.cluster.node import NODE_IP

        _host = NODE_IP
        _cluster(["up", "--node"])
        env: dict[str, str] = {}
    else:
        env = _service_env()
        _say("Postgres and Redis are up")
        _cluster(["up"])
    kubeconfig = _kubeconfig()
    _say(f"control plane is up (KUBECONFIG={kubeconfig})")
    common = {**env, "KUBECONFIG": str(kubeconfig), "CLARION_LOG_FORMAT": "json"}

    if not real:
        _spawn("telegram", [_bin("clarion"), "dev", "telegram", "--host", _host, "--port", str(EMULATOR_PORT),
                            "--limits", "real", "--bot", f"{DEMO_TOKEN}:clarion_demo_bot"], common)
        _wait("the Telegram emulator", lambda: _http_ok(f"http://{_host}:{EMULATOR_PORT}/_emulator/health"),
              30, "telegram.log")
    _spawn("smtp", [_bin("clarion"), "dev", "smtp", "--host", _host, "--port", str(SMTP_PORT)], common)
    if args.node:
        webhook_url, dsn = _install_release(kubeconfig)
    else:
        webhook_url, dsn = f"http://127.0.0.1:{WEBHOOK_PORT}", env["CLARION_DATABASE_URL"]
        _start_local_services(kubeconfig, common)

    try:
        _kubectl(kubeconfig, "get", "namespace", NAMESPACE)
    except subprocess.CalledProcessError:
        _kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    token = args.telegram_token or DEMO_TOKEN
    api = args.telegram_api if real else f"http://{_host}:{EMULATOR_PORT}"
    public = args.public_url or webhook_url
    _apply(kubeconfig, _channel_docs(token, api, public))
    def channel_ready() -> bool:
        return _condition(_get(kubeconfig, "notificationchannel", CHANNEL), "Ready").get("status") == "True"

    _wait("NotificationChannel Ready", channel_ready, 60, "operator.log")
    channel = _get(kubeconfig, "notificationchannel", CHANNEL)["status"]
    _say(f"channel {NAMESPACE}/{CHANNEL} is Ready: @{channel.get('botUsername')}, "
         f"webhook {channel.get('webhookUrl')}")

    if real:
        _say("real Telegram: send /start to your bot, then apply a BroadcastCampaign "
             "(manifests/examples/broadcast-campaign.yaml)")
    else:
        _seed_users(args.subscribers, dsn)
        with contextlib.suppress(subprocess.CalledProcessError):
            _kubectl(kubeconfig, "delete", "broadcastcampaign", CAMPAIGN, "-n", NAMESPACE, "--wait=true")
        _apply(kubeconfig, [_campaign_doc()])
        _say(f"campaign {NAMESPACE}/{CAMPAIGN} applied; following it:")
        status = _follow_campaign(kubeconfig, args.timeout)
        _say(f"campaign {status['phase']}: {status.get('sent', 0)} sent, {status.get('blocked', 0)} blocked, "
             f"{status.get('failed', 0)} failed of {status.get('total', 0)}")

    _say(f"ready in {time.monotonic() - started:.0f}s. Where to look:")
    print(f"""
  export KUBECONFIG={kubeconfig}
  kubectl get clarion -n {NAMESPACE}            (kubectl: {_kubectl_path()})
  kubectl describe bc {CAMPAIGN} -n {NAMESPACE}
  webhook metrics     {webhook_url}/metrics
  Telegram emulator   http://{_host}:{EMULATOR_PORT}/_emulator/stats?token={DEMO_TOKEN}
  SMTP sink           {_host}:{SMTP_PORT}
  logs                {STATE / 'logs'}
  stop everything     make down
""", flush=True)
    return 0


def _start_local_services(kubeconfig: Path, common: dict[str, str]) -> None:
    """The webhook, the operator and the pod runner as local processes (without --node)."""
    _spawn("webhook", [_bin("clarion-webhook"), "--host", "127.0.0.1", "--port", str(WEBHOOK_PORT)], common)
    # /healthz, not /readyz: the webhook is ready once it has the channel table, which the operator
    # (started next) creates with its migrations.
    _wait("the webhook", lambda: _http_ok(f"http://127.0.0.1:{WEBHOOK_PORT}/healthz"), 30, "webhook.log")
    _spawn("operator", [_bin("clarion-operator")],
           {**common, "CLARION_IMAGE": "local", "CLARION_NAMESPACES": NAMESPACE,
            "CLARION_LIVENESS_ENDPOINT": f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/healthz"})
    _spawn("podrunner", [_bin("clarion"), "dev", "podrunner", "--kubeconfig", str(kubeconfig),
                         "--namespace", NAMESPACE, "--logs-dir", str(STATE / "logs" / "pods")], common)
    _wait("the operator", lambda: _http_ok(f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/healthz"), 60,
          "operator.log")


def _install_release(kubeconfig: Path) -> tuple[str, str]:
    """helm upgrade --install of the chart on the node; the webhook's URL (its NodePort on loopback) and
    the bundled Postgres's DSN (at its pod's address, which the host reaches on the node's bridge)."""
    from clarion_dev.cluster.launcher import find_binaries
    from clarion_dev.cluster.node import build_images, bundled_database_url, chart_values

    values = STATE / "node-values.json"
    values.parent.mkdir(parents=True, exist_ok=True)
    # The webhook on a NodePort, which the node also serves on loopback (see clarion_dev.cluster.node).
    values.write_text(json.dumps({**chart_values(build_images()),
                                  "webhook": {"service": {"type": "NodePort"}}}))
    _say(f"installing the chart as release {RELEASE} in {RELEASE_NAMESPACE} (helm --wait)")
    helm = subprocess.run(
        [str(find_binaries() / "helm"), "--kubeconfig", str(kubeconfig), "upgrade", "--install", RELEASE,
         str(REPO / "charts" / "clarion"), "-n", RELEASE_NAMESPACE, "--create-namespace", "-f", str(values),
         "--wait", "--timeout", "5m"], capture_output=True, text=True, check=False)
    if helm.returncode:
        pods = _kubectl(kubeconfig, "get", "pods", "-A", "-o", "wide")
        raise SystemExit(f"clarion: helm install failed:\n{helm.stderr}\n{pods}")
    _say(f"chart installed: {RELEASE_NAMESPACE} runs the operator, the webhook, Postgres and Redis "
         "in containers")
    port = _kubectl(kubeconfig, "get", "service", f"{RELEASE}-webhook", "-n", RELEASE_NAMESPACE,
                    "-o", "jsonpath={.spec.ports[0].nodePort}")
    dsn = bundled_database_url(find_binaries(), kubeconfig, RELEASE, RELEASE_NAMESPACE)
    return f"http://127.0.0.1:{port}", dsn


def _kubectl_path() -> str:
    from clarion_dev.cluster.launcher import find_binaries

    return str(find_binaries() / "kubectl")


def down(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="clarion dev down", description="stop what clarion dev up started")
    parser.parse_args(list(argv))
    for name in reversed(PROCESS_ORDER):
        pid = _alive(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(name):
            time.sleep(0.1)
        if _alive(name):
            os.killpg(pid, signal.SIGKILL)
        _pidfile(name).unlink(missing_ok=True)
        _say(f"stopped {name}")
    _cluster(["down"])
    return 0
