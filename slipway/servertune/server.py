"""The server a configuration search measures: ``slipway serve`` in a subprocess in explicit model-control mode,
each candidate loaded with the load API's ``config`` override (no restart, the model files read once)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from slipway.errors import UserError
from slipway.serve import free_port, wait_ready


class Server:
    """``slipway serve REPO --model-control-mode explicit --load-model NAME`` on free loopback ports."""

    def __init__(self, repository: Path, name: str, *, timeout_s: float = 120.0) -> None:
        self.name = name
        self.http_port, self.grpc_port = free_port(), free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="slipway-tune-server-")
        self.log = Path(self._dir.name) / "serve.log"
        cmd = [sys.executable, "-m", "slipway", "serve", str(repository), "--model-control-mode", "explicit",
               "--load-model", name, "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", "-1", "--log-format", "text"]
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.proc, self.ready, timeout_s=timeout_s, log=self.log, what=f"slipway serve (model {name!r})")
        except BaseException:
            self.close()
            raise

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.http_port if protocol == 'http' else self.grpc_port}"

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 300.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                message = ""
            raise UserError(message or f"HTTP {e.code} from {path}") from None
        return json.loads(text) if text else {}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/{self.name}/ready",
                                        timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def config(self) -> dict[str, Any]:
        """The model's completed config, as the server's JSON (Triton's field names)."""
        return self._call("GET", f"v2/models/{self.name}/config")

    def load(self, config: dict[str, Any]) -> None:
        """(Re)load the model with ``config`` (the old version drains after the swap)."""
        self._call("POST", f"v2/repository/models/{self.name}/load",
                   {"parameters": {"config": json.dumps(config)}})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
