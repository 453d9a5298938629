"""Helpers of bench/kube.sh (issue 22).

  kube_load.py serve ADDR CERT KEY CONTROL PODS SECRETS
      The test API server (tests/support/kube_api.py, unchanged) with a namespace `bench`
      holding PODS pods and SECRETS secrets shaped like real ones (labels, annotations,
      containers with env and resources, conditions; ~1.8 KiB a pod, secrets of 4 keys), so a
      list answer is not tiny. Namespace `default` keeps the test server's three pods.
  kube_load.py repeat N -- CMD...
      Runs CMD N times (stdout and stderr discarded, every run must succeed); prints a JSON
      list of wall times, ms.
  kube_load.py list KUBECONFIG RESOURCE NAMESPACE SECONDS THREADS [EXPECT]
      The python `kubernetes` client listing RESOURCE (pods|secrets) in NAMESPACE in a loop on
      THREADS threads (one ApiClient, so one keep-alive pool, per thread) for SECONDS; the
      body is read raw (_preload_content=False: the client's object model would be the
      bottleneck). EXPECT: a string the first body must contain (e.g. "[REDACTED]" through
      the gateway). Prints JSON: requests, bytes, rps, mib_s, p50/p99 ms.
"""

import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def serve(addr, cert, key, control, pods, secrets):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "support"))
    import kube_api  # noqa: E402

    def pod(i):
        name = f"app-{i:05d}-7c9f8d6b5-{i * 7919 % 100000:05x}"
        o = kube_api.pod("bench", name)
        o["metadata"]["labels"] = {"app": f"app-{i % 50}", "tier": "backend",
                                   "pod-template-hash": "7c9f8d6b5",
                                   "app.kubernetes.io/part-of": "bench"}
        o["metadata"]["annotations"] = {
            "kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z",
            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
        o["metadata"]["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"app-{i % 50}-7c9f8d6b5",
            "uid": f"uid-rs-{i % 50}", "controller": True, "blockOwnerDeletion": True}]
        o["spec"] = {
            "nodeName": f"node-{i % 8}", "serviceAccountName": "default",
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app", "image": f"registry.example/app:{i % 50}.4.2",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{i}"} for k in range(6)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "512Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                   "periodSeconds": 10}}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]}
        o["status"] = {
            "phase": "Running", "hostIP": f"10.0.0.{i % 8}",
            "podIP": f"10.244.{i // 250}.{i % 250}", "qosClass": "Burstable",
            "startTime": "2026-12-01T00:00:00Z",
            "conditions": [{"type": t, "status": "True",
                            "lastTransitionTime": "2026-12-01T00:00:00Z"}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                   "image": f"registry.example/app:{i % 50}.4.2",
                                   "imageID": "registry.example/app@sha256:" + "ab" * 32,
                                   "containerID": "containerd://" + f"{i:064x}",
                                   "started": True, "state": {"running": {
                                       "startedAt": "2026-12-01T00:00:00Z"}}}]}
        return name, o

    for i in range(pods):
        name, o = pod(i)
        kube_api.STORE["pods"][("bench", name)] = o
    for i in range(secrets):
        name = f"secret-{i:05d}"
        data = {k: base64.b64encode(f"{k}-{i}-{'s' * 100}".encode()).decode() for k in
                ("password", "token", "tls.key", "config")}
        kube_api.STORE["secrets"][("bench", name)] = kube_api.secret("bench", name, data)
    sys.argv = ["kube_api.py", addr, cert, key, str(control)]
    kube_api.main()


def repeat(n, cmd):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(round((time.perf_counter() - t0) * 1000, 2))
        if r.returncode != 0:
            sys.exit(f"{cmd} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
    print(json.dumps(times))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def list_loop(kubeconfig, resource, ns, secs, threads, expect):
    from kubernetes import client, config

    first = []
    lock = threading.Lock()
    lat = []
    total = [0, 0]
    stop = time.perf_counter() + secs
    errors = []

    def worker():
        c = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=c)
        api = client.CoreV1Api(client.ApiClient(c))
        call = api.list_namespaced_pod if resource == "pods" else api.list_namespaced_secret
        n = b = 0
        mine = []
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = call(ns, _preload_content=False)
                data = r.data
                mine.append((time.perf_counter() - t0) * 1000)
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {data[:300]!r}")
                if not first:
                    first.append(data)
                n += 1
                b += len(data)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        with lock:
            total[0] += n
            total[1] += b
            lat.extend(mine)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        sys.exit(f"list {resource}: {errors[0]}")
    body = first[0] if first else b""
    if expect and expect.encode() not in body:
        sys.exit(f"list {resource}: the first body does not contain {expect!r}: {body[:300]!r}")
    items = len(json.loads(body).get("items", [])) if body else 0
    print(json.dumps({
        "requests": total[0], "bytes": total[1], "secs": round(elapsed, 2),
        "items": items, "body_kib": round(len(body) / 1024, 1),
        "rps": round(total[0] / elapsed, 1), "mib_s": round(total[1] / elapsed / 2**20, 2),
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "p99_ms": round(pct(lat, 0.99), 2) if lat else None}))


def main():
    mode = sys.argv[1]
    if mode == "serve":
        a = sys.argv[2:]
        serve(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
    elif mode == "repeat":
        n = int(sys.argv[2])
        assert sys.argv[3] == "--"
        repeat(n, sys.argv[4:])
    elif mode == "list":
        a = sys.argv[2:]
        list_loop(a[0], a[1], a[2], float(a[3]), int(a[4]), a[5] if len(a) > 5 else "")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
