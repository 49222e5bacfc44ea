"""Storage faults (issue 9): S3 calls under injected failures retry a bounded number of times,
never leave a pointer corrupt or an object half-written, and fail with the operation named.

A small fault-injecting HTTP proxy on 127.0.0.1 sits between the registry and a real
moto_server: it can drop the connection mid-upload, answer 500 / 503 / SlowDown, stall past
the client's read timeout, or forward a write and then drop the answer (the write landed, the
client does not know). Timeouts are short (1 s) so the file stays well under 90 s.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from secmlops.errors import ToolError
from secmlops.registry.stores import RegistryRefusal, S3Registry, WriteConflict

pytestmark = pytest.mark.integration

ATTEMPTS = 4
TIMEOUT = 1.0
MODEL_KEY = "churn/versions/v1/model/model.bin"
POINTER_KEY = "churn/stages/production.json"
AUDIT_KEY = "churn/audit/00000001.json"

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle the request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass
class Rule:
    method: str
    path: str  # substring of the request path
    action: str  # drop | drop_after | 500 | 503 | slowdown | stall
    times: int | None = 1  # None: every matching request
    hits: int = 0


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    url: str = ""

    def fault(self, method: str, path: str) -> str | None:
        for rule in self.rules:
            if (rule.method == method and rule.path in path) and (
                rule.times is None or rule.hits < rule.times
            ):
                rule.hits += 1
                return rule.action
        return None


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    state = FaultProxy(upstream=s3_endpoint)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            self.close_connection = True
            length = int(self.headers.get("Content-Length") or 0)
            action = state.fault(self.command, self.path)
            if action == "drop":  # mid-upload: half the body read, then the line goes dead
                self.rfile.read(length // 2)
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = self.rfile.read(length) if length else b""
            if action == "stall":
                time.sleep(TIMEOUT * 2.5)
                return
            if action in _ERRORS:
                status, code, message = _ERRORS[action]
                xml = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(xml)
                return
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if action == "drop_after":  # the write landed; its answer is lost
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()


@pytest.fixture
def store(proxy: FaultProxy, s3_endpoint: str, aws_env: None) -> Iterator[S3Registry]:
    import boto3

    bucket = f"faults-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    proxy.rules.clear()
    yield S3Registry(bucket, "reg", endpoint_url=proxy.url, max_attempts=ATTEMPTS, timeout=TIMEOUT)
    proxy.rules.clear()


def _seed(store: S3Registry) -> tuple[bytes, str]:
    """A model file and a production pointer already in the store (before the fault)."""
    store.put(MODEL_KEY, b"model-bytes" * 1000)
    old = b'{"version": "v1", "seq": 1}'
    store.put(POINTER_KEY, old)
    obj = store.get(POINTER_KEY)
    assert obj is not None
    return old, obj.etag


def _operation(store: S3Registry, op: str, etag: str) -> None:
    if op == "register":  # release upload: create-only objects
        store.put("churn/versions/v2/model/model.bin", b"new-model" * 1000)
    elif op == "promote":  # pointer compare-and-swap, then its audit record
        store.put(POINTER_KEY, b'{"version": "v2", "seq": 2}', replace_etag=etag)
        store.put(AUDIT_KEY, b'{"event": "promoted"}')
    elif op == "fetch":
        assert store.list_keys("churn/versions/v1/model") == [MODEL_KEY]
        assert store.read(MODEL_KEY) == b"model-bytes" * 1000


_TARGET = {  # (method, path) the fault hits, per operation
    "register": ("PUT", "versions/v2/model"),
    "promote": ("PUT", "stages/production.json"),
    "fetch": ("GET", "versions/v1/model"),
}


@pytest.mark.parametrize("op", ["register", "promote", "fetch"])
@pytest.mark.parametrize("fault", ["drop", "500", "503", "slowdown", "stall"])
def test_transient_fault_is_retried_and_the_operation_completes(
    store: S3Registry, proxy: FaultProxy, op: str, fault: str
) -> None:
    _, etag = _seed(store)
    method, path = _TARGET[op]
    rule = Rule(method, path, fault, times=1)
    proxy.rules.append(rule)
    _operation(store, op, etag)
    assert rule.hits == 1  # the fault did happen, and the retry got through
    proxy.rules.clear()
    if op == "promote":
        assert store.read(POINTER_KEY) == b'{"version": "v2", "seq": 2}'
    if op == "register":
        assert store.read("churn/versions/v2/model/model.bin") == b"new-model" * 1000


@pytest.mark.parametrize("op", ["register", "promote"])
def test_conditional_put_whose_answer_was_lost_is_recognised_as_landed(
    store: S3Registry, proxy: FaultProxy, op: str
) -> None:
    """The write landed but its answer was dropped: the retry's precondition fails
    (the key now exists / its etag moved). That is our own write, not a conflict."""
    _, etag = _seed(store)
    method, path = _TARGET[op]
    proxy.rules.append(Rule(method, path, "drop_after", times=1))
    _operation(store, op, etag)
    proxy.rules.clear()
    # A real conflict is still a refusal: the create-only key is taken, the etag is stale.
    with pytest.raises(WriteConflict) as exc:
        if op == "register":
            store.put("churn/versions/v2/model/model.bin", b"other bytes")
        else:
            store.put(POINTER_KEY, b'{"version": "v3"}', replace_etag=etag)
    assert exc.value.reason in (RegistryRefusal.OBJECT_EXISTS, RegistryRefusal.OBJECT_CHANGED)


@pytest.mark.parametrize(
    ("op", "fault", "expected"),
    [
        ("register", "drop", "S3 PUT churn/versions/v2/model/model.bin failed after 4 attempts"),
        ("promote", "503", "S3 PUT churn/stages/production.json failed after 4 attempts"),
        ("promote", "stall", "S3 PUT churn/stages/production.json failed after 4 attempts"),
        ("fetch", "slowdown", "S3 GET churn/versions/v1/model/model.bin failed after 4 attempts"),
        ("fetch", "stall", "S3 GET churn/versions/v1/model/model.bin failed after 4 attempts"),
    ],
)
def test_persistent_fault_fails_exit_3_naming_the_operation_and_leaves_no_corruption(
    store: S3Registry, proxy: FaultProxy, op: str, fault: str, expected: str
) -> None:
    old, etag = _seed(store)
    method, path = _TARGET[op]
    rule = Rule(method, path, fault, times=None)
    proxy.rules.append(rule)
    t0 = time.monotonic()
    with pytest.raises(ToolError) as exc:
        _operation(store, op, etag)
    elapsed = time.monotonic() - t0
    proxy.rules.clear()
    assert exc.value.exit_code == 3
    assert exc.value.message.startswith(expected), exc.value.message
    assert "\n" not in exc.value.message and "Traceback" not in exc.value.message
    assert rule.hits == ATTEMPTS  # bounded: exactly max_attempts tries, no more
    assert elapsed < 40
    # After the fault: the pointer is the old one or the new one, never anything else,
    # and a create-only object is either absent or whole.
    assert store.read(POINTER_KEY) in (old, b'{"version": "v2", "seq": 2}')
    new_model = store.get("churn/versions/v2/model/model.bin")
    assert new_model is None or new_model.data == b"new-model" * 1000
    assert store.read(MODEL_KEY) == b"model-bytes" * 1000


def test_list_under_throttling_fails_naming_the_listing(
    store: S3Registry, proxy: FaultProxy
) -> None:
    _seed(store)
    proxy.rules.append(Rule("GET", "list-type=2", "slowdown", times=None))
    with pytest.raises(ToolError, match=r"^S3 LIST churn/versions failed after 4 attempts"):
        store.list_keys("churn/versions")


def test_bad_retry_settings_are_input_errors(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, aws_env: None
) -> None:
    from secmlops.errors import InputError

    monkeypatch.setenv("SECMLOPS_S3_MAX_ATTEMPTS", "0")
    with pytest.raises(InputError, match="SECMLOPS_S3_MAX_ATTEMPTS"):
        S3Registry("b", endpoint_url=s3_endpoint)
    monkeypatch.setenv("SECMLOPS_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SECMLOPS_S3_TIMEOUT", "0.5")
    reg = S3Registry("b", endpoint_url=s3_endpoint)
    assert (reg.max_attempts, reg.timeout) == (2, 0.5)
