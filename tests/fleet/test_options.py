"""The NATS options, subjects and stream checks, without a server."""

from __future__ import annotations

import argparse

import pytest
from nats.js.api import RetentionPolicy, StreamConfig

from procstream.cli import build_parser
from procstream.fleet.options import (
    NatsConfigError,
    parse_duration,
    parse_size,
    publish_settings_from,
    settings_from,
    split_urls,
    stream_spec_from,
)
from procstream.fleet.stream import incompatibilities, stream_config
from procstream.fleet.subjects import (
    check_host_name,
    event_subject,
    host_token,
    lost_msg_id,
    msg_id,
    parse_msg_id,
    subject_matches,
)


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_host_tokens_and_ids() -> None:
    assert host_token("web-01") == "web-01"
    assert host_token("a.b*c>d e\tf") == "a_b_c_d_e_f"
    assert event_subject("web-01", "proc.exit") == "procstream.web-01.proc.exit"
    assert msg_id("h.x", "e1", 7) == "h.x:e1:7" and lost_msg_id("h", "e1", 3) == "h:e1:lost:3"
    assert parse_msg_id("h.x:e1:7", "h.x", "e1") == (False, 7)
    assert parse_msg_id("h:e1:lost:3", "h", "e1") == (True, 3)
    assert parse_msg_id("h:e2:7", "h", "e1") is None and parse_msg_id("h:e1:x", "h", "e1") is None
    assert check_host_name("ok") is None and check_host_name("") == "empty"
    assert check_host_name("a\x00b") == "contains control characters" and check_host_name("x" * 256)


def test_subject_matching() -> None:
    assert subject_matches("procstream.>", "procstream.h.proc.exit")
    assert subject_matches("procstream.*.proc.*", "procstream.h.proc.exit")
    assert not subject_matches("procstream.*.cycle", "procstream.h.proc.exit")
    assert not subject_matches("procstream.>", "procstream")
    assert not subject_matches("procstream.h", "procstream.h.cycle")


def test_urls() -> None:
    assert split_urls("nats://a:4222, tls://b,c:1") == ("nats://a:4222", "tls://b", "nats://c:1")
    for bad, why in [("http://a", "scheme"), ("nats://a:x", "Port"), ("nats://:4222", "expected"),
                     ("nats://a/p", "expected"), (" , ", "no NATS server"), ("nats://a:0", "port 0")]:
        with pytest.raises(NatsConfigError, match=why):
            split_urls(bad)
    # credentials in a URL never reach a message
    with pytest.raises(NatsConfigError) as exc:
        split_urls("http://user:secret@a")
    assert "secret" not in str(exc.value)


def test_durations_and_sizes() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "24h", "7d", "1.5h")] == [90, 90, 900, 86400, 604800, 5400]
    assert [parse_size(t) for t in ("1024", "512M", "1G", "2KiB", "0")] == [1024, 512 << 20, 1 << 30, 2048, -1]
    for bad in ("", "1y", "-1"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("1.5G")


def test_serve_options(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PROCSTREAM_NATS_PASSWORD", "from-env")
    monkeypatch.delenv("PROCSTREAM_NATS_TOKEN", raising=False)
    args = serve_args("--nats", "nats://a,nats://b", "--nats", "c", "--nats-user", "u",
                      "--nats-max-age", "7d", "--nats-max-bytes", "10G", "--nats-replicas", "3")
    s = settings_from(args, args.nats)
    assert s.servers == ("nats://a", "nats://b", "nats://c") and (s.user, s.password) == ("u", "from-env")
    assert s.connect_options()["password"] == "from-env" and "tls" not in s.connect_options()
    spec = stream_spec_from(args)
    assert (spec.name, spec.max_age, spec.max_bytes, spec.replicas, spec.duplicate_window) == (
        "PROCSTREAM", 604800, 10 << 30, 3, 120)
    assert publish_settings_from(args).max_inflight == 1000
    monkeypatch.delenv("PROCSTREAM_NATS_PASSWORD")
    problems = {
        ("--nats-replicas", "7"): "1 to 5",
        ("--nats-duplicate-window", "30s"): "at least 120s",
        ("--nats-max-inflight", "0"): "at least 1",
        ("--nats-stream", "a.b"): "letters, digits",
        ("--nats-tls-ca", str(tmp_path / "missing.pem")): "No such file",
        ("--nats-tls-key", "k.pem"): "needs --nats-tls-cert",
    }
    for (flag, value), message in problems.items():
        a = serve_args("--nats", "nats://a", flag, value)
        with pytest.raises(NatsConfigError, match=message):
            settings_from(a, a.nats)
            stream_spec_from(a)
            publish_settings_from(a)
    a = serve_args("--nats", "nats://a", "--nats-password", "p")
    with pytest.raises(NatsConfigError, match="needs --nats-user"):
        settings_from(a, a.nats)


def test_what_makes_a_stream_unusable() -> None:
    from procstream.fleet.options import StreamSpec

    good = stream_config(StreamSpec())
    assert incompatibilities(good, "web-01") == []
    assert incompatibilities(StreamConfig(subjects=["procstream.web-01.>"], duplicate_window=120), "web-01") == []
    cases = {
        "its subjects": StreamConfig(subjects=["procstream.*.proc.*"], duplicate_window=120),
        "retention": StreamConfig(subjects=["procstream.>"], duplicate_window=120, retention=RetentionPolicy.INTEREST),
        "duplicate window": StreamConfig(subjects=["procstream.>"], duplicate_window=60),
        "no_ack": StreamConfig(subjects=["procstream.>"], duplicate_window=120, no_ack=True),
        "sealed": StreamConfig(subjects=["procstream.>"], duplicate_window=120, sealed=True),
    }
    for word, config in cases.items():
        problems = incompatibilities(config, "web-01")
        assert len(problems) == 1 and word in problems[0], (word, problems)


def test_creds_and_nkey_files_say_what_they_need(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    creds = tmp_path / "agent.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    a = serve_args("--nats", "nats://a", "--nats-creds", str(creds))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "nkeys" else object())
    with pytest.raises(NatsConfigError, match="need the nkeys package"):
        settings_from(a, a.nats)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert settings_from(a, a.nats).connect_options()["user_credentials"] == str(creds)
    a = serve_args("--nats", "nats://a", "--nats-creds", str(tmp_path / "missing.creds"))
    with pytest.raises(NatsConfigError, match="--nats-creds .*missing.creds: No such file"):
        settings_from(a, a.nats)
