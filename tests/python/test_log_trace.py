"""Logging (`log.rotation.*`, `emqx_ctl log ...`) and tracing (`emqx_ctl trace ...`,
src/logging/, src/trace/) against the real binary."""

import time

from helpers import V5, connected, unique_id, wait_until


def test_log_level_changes_at_run_time_and_handlers_are_listed(broker_factory):
    b = broker_factory({"log.to": "both", "log.level": "warning"})
    assert b.ctl("log", "primary-level").stdout == "warning\n"
    out = b.ctl("log", "handlers", "list").stdout
    assert "LogHandler(id=console, level=warning, destination=console)" in out
    assert f"LogHandler(id=file, level=warning, destination={b.log_dir / 'emqx.log'})" in out
    # At warning, a connection's info line is not written; at debug it is.
    c = connected(b.port, client_id="before-debug")
    c.disconnect()
    r = b.ctl("log", "set-level", "debug")
    assert r.returncode == 0 and r.stdout == "debug\n"
    assert b.ctl("log", "primary-level").stdout == "debug\n"
    c = connected(b.port, client_id="after-debug")
    c.disconnect()
    log = (b.log_dir / "emqx.log").read_text()
    assert wait_until(lambda: "after-debug" in (b.log_dir / "emqx.log").read_text())
    assert "before-debug" not in log
    assert b.ctl("log", "primary-level", "error").stdout == "error\n"
    bad = b.ctl("log", "set-level", "loud")
    assert bad.returncode != 0 and "Invalid log level: loud" in bad.stdout


def test_the_log_file_rolls_over_at_its_size(broker_factory):
    b = broker_factory(
        {"log.to": "file", "log.level": "debug", "log.rotation.size": "4KB", "log.rotation.count": "3"}
    )
    for i in range(60):
        c = connected(b.port, client_id=f"roll-{i:03}")
        c.disconnect()
    assert wait_until(lambda: (b.log_dir / "emqx.log.3").exists(), timeout_s=10), sorted(
        p.name for p in b.log_dir.iterdir()
    )
    names = sorted(p.name for p in b.log_dir.iterdir() if p.name.startswith("emqx.log"))
    assert names == ["emqx.log", "emqx.log.1", "emqx.log.2", "emqx.log.3"], names
    for p in b.log_dir.iterdir():
        if p.name.startswith("emqx.log"):
            assert p.stat().st_size <= 4 * 1024, (p, p.stat().st_size)
    # The newest lines are in emqx.log.
    assert "roll-059" in (b.log_dir / "emqx.log").read_text() + (b.log_dir / "emqx.log.1").read_text()


def test_a_client_trace_holds_its_publishes_and_nobody_elses(broker):
    path = broker.root / "trace_client.log"
    traced, other = unique_id("traced"), unique_id("other")
    r = broker.ctl("trace", "start", "client", traced, str(path), "debug")
    assert (r.returncode, r.stdout) == (0, f"trace clientid {traced} successfully\n")
    again = broker.ctl("trace", "start", "client", traced, str(path))
    assert again.returncode != 0 and "already_existed" in again.stdout
    topic_path = broker.root / "trace_topic.log"
    assert broker.ctl("trace", "start", "topic", "t/#", str(topic_path)).stdout == "trace topic t/# successfully\n"
    assert broker.ctl("trace", "list").stdout == (
        f'Trace(clientid={traced}, level=debug, destination="{path}")\n'
        f'Trace(topic=t/#, level=all, destination="{topic_path}")\n'
    )
    sub = connected(broker.port, protocol=V5)
    sub.subscribe("#", qos=1)
    a = connected(broker.port, client_id=traced)
    o = connected(broker.port, client_id=other)
    for i in range(3):
        a.publish(f"t/{i}", f"mine-{i}".encode(), qos=1)
        o.publish(f"t/{i}", f"theirs-{i}".encode(), qos=1)
        o.publish(f"u/{i}", f"elsewhere-{i}".encode(), qos=1)
    sub.wait_messages(9)
    a.disconnect()
    o.disconnect()
    assert wait_until(lambda: "DISCONNECTED" in path.read_text())
    text = path.read_text()
    for i in range(3):
        assert f"PUBLISH to t/{i}" in text and f"mine-{i}" in text
    assert "theirs" not in text and "elsewhere" not in text and other not in text
    assert f"{traced} CONNECTED" in text and "[debug]" in text
    # The topic trace: everybody's publishes to t/#, nothing else.
    topic_text = topic_path.read_text()
    for i in range(3):
        assert f"mine-{i}" in topic_text and f"theirs-{i}" in topic_text
    assert "elsewhere" not in topic_text
    # Stopped: nothing more is written.
    assert broker.ctl("trace", "stop", "client", traced).stdout == f"stop tracing clientid {traced} successfully\n"
    assert broker.ctl("trace", "stop", "topic", "t/#").stdout == "stop tracing topic t/# successfully\n"
    missing = broker.ctl("trace", "stop", "client", traced)
    assert missing.returncode != 0 and "not_found" in missing.stdout
    size = path.stat().st_size
    a = connected(broker.port, client_id=traced)
    a.publish("t/after", b"after-stop", qos=1)
    a.disconnect()
    time.sleep(0.3)
    assert path.stat().st_size == size
    assert broker.ctl("trace", "list").stdout == ""
    sub.disconnect()
