"""Shared fixtures of the server suite (tests/e2e_serve.rs runs it).

MCC_SERVE_BIN is a compiled SmolLM2 binary; MCC_SERVE_GOLDEN is llama.cpp's greedy
golden for the kernel tier that binary runs here.
"""

import json
import os
import re
import signal
import subprocess
import threading

import pytest

BIN = os.environ["MCC_SERVE_BIN"]


class Server:
    """`BIN serve` on a free port; its stderr is kept in `log`."""

    def __init__(self, *args):
        cmd = [BIN, "serve", "--port", "0", "-t", "2", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        first = self.proc.stderr.readline()
        self.log.append(first)
        m = re.search(r"http://([\d.]+):(\d+)", first)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"{cmd} did not start: {first}{self.proc.stderr.read()}")
        self.url = f"http://{m.group(1)}:{m.group(2)}"
        self.port = int(m.group(2))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def terminate(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def metrics(self):
        import requests

        text = requests.get(self.url + "/metrics", timeout=10).text
        return {
            m.group(1): float(m.group(2))
            for m in re.finditer(r"^(mcc_[a-z_]+) (\S+)$", text, re.M)
        }


@pytest.fixture(scope="session")
def server():
    s = Server("--parallel", "16", "--metrics")
    yield s
    assert s.terminate() == 0, "".join(s.log)


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def golden():
    with open(os.environ["MCC_SERVE_GOLDEN"]) as f:
        return json.load(f)
