"""`modelrollout run` flags become the operator's settings."""

from __future__ import annotations

import argparse

import pytest

from modelrollout import run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run.add_parser(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_prometheus_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELROLLOUT_PROMETHEUS_CREDENTIALS_ALLOW", raising=False)
    config = run.config_from_args(parse())
    assert (config.prometheus_workers, config.prometheus_queries_per_rollout) == (16, 4)
    assert config.prometheus_credentials_allow == ()
    config = run.config_from_args(
        parse(
            "--prometheus-url=http://prometheus.monitoring:9090",
            "--prometheus-credentials-allow=https://thanos.example.com",
            "--prometheus-credentials-allow=http://prom.team-a:9090",
            "--prometheus-workers=32",
            "--prometheus-queries-per-rollout=2",
        )
    )
    assert config.prometheus_url == "http://prometheus.monitoring:9090"
    assert config.prometheus_credentials_allow == ("https://thanos.example.com", "http://prom.team-a:9090")
    assert (config.prometheus_workers, config.prometheus_queries_per_rollout) == (32, 2)


def test_allowed_addresses_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELROLLOUT_PROMETHEUS_CREDENTIALS_ALLOW", "http://a:9090  http://b:9090\n")
    assert run.config_from_args(parse()).prometheus_credentials_allow == ("http://a:9090", "http://b:9090")


@pytest.mark.parametrize("flag", ["--prometheus-workers=0", "--prometheus-queries-per-rollout=-1"])
def test_thread_counts_are_positive(flag: str) -> None:
    with pytest.raises(SystemExit):
        parse(flag)


def test_reconciliation_slots() -> None:
    assert run.config_from_args(parse()).max_concurrent_reconciles == 128
    assert run.config_from_args(parse("--max-concurrent-reconciles=16")).max_concurrent_reconciles == 16
    with pytest.raises(SystemExit):
        parse("--max-concurrent-reconciles=0")


def test_status_refresh_budget() -> None:
    assert run.config_from_args(parse()).status_refreshes_per_second == 2.0
    assert run.config_from_args(parse("--status-refreshes-per-second=0.5")).status_refreshes_per_second == 0.5
    assert (
        run.config_from_args(parse("--status-refreshes-per-second=off")).status_refreshes_per_second is None
    )
    for refused in ("0", "-1", "inf", "nan"):
        with pytest.raises(SystemExit):
            parse(f"--status-refreshes-per-second={refused}")


def test_slow_reconciliations_logged() -> None:
    assert run.config_from_args(parse()).slow_reconcile_seconds == 5.0
    assert run.config_from_args(parse("--log-reconciles-over=0.25")).slow_reconcile_seconds == 0.25
    assert run.config_from_args(parse("--log-reconciles-over=0")).slow_reconcile_seconds is None
    with pytest.raises(SystemExit):
        parse("--log-reconciles-over=-1")


def test_shard_flag() -> None:
    assert parse().shard is None
    assert parse("--shard=team-a").shard == "team-a"
    assert parse().leader_election_id is None  # resolved per shard at the start (shards.of_shard)
    for bad in ("--shard=Team-A", "--shard=", "--shard=a_b"):
        with pytest.raises(SystemExit):
            parse(bad)
