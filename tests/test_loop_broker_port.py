"""The embedded Valkey binds an OS-assigned port, so concurrent runs, test sessions and Ray jobs never collide."""

from __future__ import annotations

import logging
import socket

import redis

from dso.broker import server as broker_server
from dso.broker.server import EmbeddedValkey


def test_two_embedded_servers_get_distinct_os_assigned_ports(tmp_path):
    with EmbeddedValkey(tmp_path / "a") as first, EmbeddedValkey(tmp_path / "b") as second:
        assert first.url != second.url
        for server in (first, second):
            assert redis.Redis.from_url(server.url).ping()
            assert broker_server.read_server_info(server.data_dir)["url"] == server.url


def test_a_port_taken_between_probe_and_bind_is_retried_on_a_fresh_one(tmp_path, monkeypatch, caplog):
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    real_free_port = broker_server.free_port
    offered = iter([taken])
    monkeypatch.setattr(broker_server, "free_port", lambda host="127.0.0.1": next(offered, None) or real_free_port(host))
    try:
        with caplog.at_level(logging.WARNING, logger="dso.broker.server"):
            with EmbeddedValkey(tmp_path / "valkey", start_timeout_s=5.0) as server:
                assert not server.url.endswith(f":{taken}/0")
                assert redis.Redis.from_url(server.url).ping()
        assert f"lost port {taken}" in caplog.text
    finally:
        squatter.close()
