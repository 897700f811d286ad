"""Alerts: fire once when a condition starts, resolve once when it ends, reach a local webhook
receiver (with retries), and a dead webhook never slows a request."""

from __future__ import annotations

import http.server
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from gemmakit.errors import ConfigError, EngineError
from gemmakit.monitoring.alerts import AlertManager
from gemmakit.monitoring.config import AlertRule, MonitoringSettings
from gemmakit.monitoring.window import RequestRecord, RequestWindow
from gemmakit.settings import Settings
from tests.conftest import FakeEngine

M = "gemma-test"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def manager(rule: AlertRule, gauges=None) -> tuple[AlertManager, RequestWindow, Clock]:
    clock = Clock()
    window = RequestWindow(clock=clock)
    m = AlertManager(MonitoringSettings(alerts=[rule]), window, model=M,
                     gauges=gauges or (lambda: {}), wall_clock=clock)
    return m, window, clock


def test_fires_once_and_resolves_once_over_a_sliding_window():
    m, window, clock = manager(AlertRule(name="slow-first-token", metric="ttft_p95_seconds",
                                         above=2.0, window_seconds=60))
    assert m.evaluate() == []  # no data: nothing to alert on
    for ttft in (0.5, 3.0, 4.0):
        window.add(RequestRecord(t=clock.t, status=200, e2e_s=5.0, ttft_s=(ttft,)))
    events = m.evaluate()
    assert [e["status"] for e in events] == ["firing"]
    assert events[0]["value"] == 4.0 and events[0]["threshold"] == 2.0
    assert m.active()[0]["name"] == "slow-first-token"
    clock.t += 30
    assert m.evaluate() == []  # still firing: no second event
    clock.t += 31  # the slow requests leave the 60 s window
    window.add(RequestRecord(t=clock.t, status=200, e2e_s=0.3, ttft_s=(0.1,)))
    events = m.evaluate()
    assert [e["status"] for e in events] == ["resolved"]
    assert events[0]["started_at"] == 1000.0 and events[0]["resolved_at"] == 1061.0
    assert m.active() == [] and m.evaluate() == []
    assert [e["status"] for e in m.history] == ["firing", "resolved"]


def test_below_thresholds_success_rate_and_gauges():
    m, window, clock = manager(AlertRule(name="errors", metric="success_rate", below=0.9,
                                         window_seconds=10))
    # client mistakes (400, 404) do not count against the service; 5xx and 429 do
    for status in (200, 200, 400, 404, 400, 400, 400, 400):
        window.add(RequestRecord(t=clock.t, status=status, e2e_s=0.1))
    assert m.evaluate() == []
    window.add(RequestRecord(t=clock.t, status=500, e2e_s=0.1))
    assert [e["status"] for e in m.evaluate()] == ["firing"]
    assert m.states[0].value == pytest.approx(2 / 3)

    depth = {"queue_depth": 0.0}
    m2, _, _ = manager(AlertRule(name="queue", metric="queue_depth", above=4),
                       gauges=lambda: dict(depth))
    assert m2.evaluate() == []
    depth["queue_depth"] = 5
    assert [e["status"] for e in m2.evaluate()] == ["firing"]
    depth["queue_depth"] = 1
    assert [e["status"] for e in m2.evaluate()] == ["resolved"]


def test_alert_config_from_toml(tmp_path):
    cfg = tmp_path / "gemmakit.toml"
    cfg.write_text('''
[monitoring]
webhook = "http://127.0.0.1:9000/hook"
[[monitoring.alerts]]
name = "slow-first-token"
metric = "ttft_p95_seconds"
above = 2.0
window_seconds = 60
[[monitoring.alerts]]
name = "slow"
metric = "tokens_per_second_avg"
below = 5
''')
    s = Settings.load(cfg)
    assert str(s.monitoring.webhook) == "http://127.0.0.1:9000/hook"
    assert [(a.name, a.metric, a.above, a.below, a.window_seconds) for a in s.monitoring.alerts] \
        == [("slow-first-token", "ttft_p95_seconds", 2.0, None, 60.0),
            ("slow", "tokens_per_second_avg", None, 5.0, 60.0)]
    # defaults when none are configured: the seed's four thresholds
    assert {a.metric for a in Settings.load().monitoring.alerts} == {
        "e2e_p95_seconds", "memory_rss_bytes", "tokens_per_second_avg", "success_rate"}
    for bad in ('above = 1\nbelow = 2', '', 'above = 1\nmetric2 = "x"'):
        cfg.write_text(f'[[monitoring.alerts]]\nname = "x"\nmetric = "queue_depth"\n{bad}\n')
        with pytest.raises(ConfigError):
            Settings.load(cfg)
    cfg.write_text('[[monitoring.alerts]]\nname = "x"\nmetric = "gpu_temp"\nabove = 1\n')
    with pytest.raises(ConfigError, match="metric"):
        Settings.load(cfg)


# --- a loopback webhook receiver ------------------------------------------------------------
class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict] = []
        self.attempts = 0
        self.delivered_on: list[int] = []  # attempt number of each delivered event
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                else:
                    receiver.events.append(json.loads(body))
                    receiver.delivered_on.append(receiver.attempts)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def test_alert_fires_and_resolves_through_the_webhook(make_client, wait_until, receiver):
    engine = FakeEngine()
    rule = {"name": "errors", "metric": "success_rate", "below": 0.5, "window_seconds": 1.0}
    c = make_client(engine, monitoring={"webhook": receiver.url, "evaluate_every_seconds": 0.05,
                                        "alerts": [rule]})

    def failing_request_and_firing() -> bool:
        engine.queue_error(EngineError("boom"))
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 500
        return bool(c.get("/v1/alerts").json()["data"])

    wait_until(failing_request_and_firing, timeout=20)
    assert [a["name"] for a in c.get("/v1/alerts").json()["data"]] == ["errors"]
    # the first two deliveries fail (HTTP 500): the event arrives on the third attempt
    wait_until(lambda: len(receiver.events) >= 1, timeout=20)
    firing = receiver.events[0]
    assert firing["status"] == "firing" and firing["alert"] == "errors"
    assert firing["value"] == 0.0 and firing["comparison"] == "below" and firing["model"] == M
    assert receiver.delivered_on[0] == 3
    # successful requests after the failures left the window: resolved, once
    wait_until(lambda: c.post("/v1/chat/completions", json=CHAT).status_code == 200
               and len(receiver.events) >= 2, timeout=20)
    assert [e["status"] for e in receiver.events] == ["firing", "resolved"]
    assert c.get("/v1/alerts").json()["data"] == []
    summary = c.get("/v1/monitoring/summary").json()
    assert summary["alerts"] == []


def test_a_dead_webhook_does_not_slow_requests(make_client, wait_until):
    """The webhook accepts connections and never answers. Requests sent while a delivery hangs
    all complete; their latencies are measured against a run without a webhook."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepted by the kernel, never read or answered
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/hook"
    always = {"name": "always", "metric": "memory_rss_bytes", "above": 1}

    def latencies(client) -> list[float]:
        out = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            out.append(time.perf_counter() - t0)
        return out

    base = latencies(make_client(FakeEngine()))
    c = make_client(FakeEngine(), monitoring={
        "webhook": url, "webhook_timeout_seconds": 60, "evaluate_every_seconds": 0.02,
        "alerts": [always]})
    wait_until(lambda: c.get("/v1/alerts").json()["data"], timeout=10)
    hung.settimeout(10)
    conn, _ = hung.accept()  # the delivery is in flight, and will get no answer
    t0 = time.perf_counter()
    with_dead = latencies(c)
    elapsed = time.perf_counter() - t0
    print(f"\nmedian latency without webhook {statistics.median(base) * 1000:.2f} ms, "
          f"with a hung webhook {statistics.median(with_dead) * 1000:.2f} ms "
          f"(max {max(with_dead) * 1000:.2f} ms)")
    # every request finished while the delivery was still hanging (its timeout is 60 s)
    assert elapsed < 60
    assert conn.recv(4096).startswith(b"POST /hook")  # still waiting for its answer
    conn.close()
    hung.close()
