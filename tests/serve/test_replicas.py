"""Two replicas behind HAProxy with docs/haproxy.cfg: one is killed under load, and no
request sent after the kill fails."""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import Server

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
CFG = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "haproxy.cfg")


@pytest.mark.skipif(HAPROXY is None and not os.environ.get("MCC_REQUIRE_HAPROXY"), reason="no haproxy")
def test_killing_a_replica_under_load_fails_no_later_request(tmp_path):
    assert HAPROXY, "MCC_REQUIRE_HAPROXY is set but haproxy is not installed"
    a, b = Server("--parallel", "4"), Server("--parallel", "4")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = open(CFG).read()
    cfg = cfg.replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{port}")
    cfg = re.sub(r"server replica1 127\.0\.0\.1:\d+", f"server replica1 127.0.0.1:{a.port}", cfg)
    cfg = re.sub(r"server replica2 127\.0\.0\.1:\d+", f"server replica2 127.0.0.1:{b.port}", cfg)
    (tmp_path / "haproxy.cfg").write_text(cfg)
    lb = subprocess.Popen([HAPROXY, "-f", str(tmp_path / "haproxy.cfg"), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        results = []  # (start time, ok)
        stop = time.time() + 8

        def client(i):
            while time.time() < stop:
                t0 = time.time()
                try:
                    r = requests.post(url + "/v1/completions", json={"prompt": f"Client {i} says", "max_tokens": 4, "temperature": 0}, timeout=60)
                    results.append((t0, r.status_code == 200))
                except requests.RequestException:
                    results.append((t0, False))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(3)
        a.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        for t in threads:
            t.join()
        after = [ok for t0, ok in results if t0 > killed]
        assert len(after) > 20, len(after)
        assert all(after), f"{after.count(False)} of {len(after)} requests sent after the kill failed"
        assert any(ok for t0, ok in results if t0 < killed)
    finally:
        lb.terminate()
        lb.wait(10)
        a.proc.kill()
        assert b.terminate() == 0
