from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter, _Service


def test_request_counters_alone_match_the_full_counts_at_every_moment() -> None:
    service = _Service(since=100.0, rps=4.0, error_ratio=0.25)
    service.fold(110.0)  # 40 requests so far: 30 ok, 10 failed
    service.rps, service.error_ratio = 2.0, 0.0
    for now in (110.0, 115.0, 130.0):
        full = {code: counts.requests for code, counts in service.counts_at(now).items()}
        assert service.requests_at(now) == full
    assert service.requests_at(115.0) == {"200": 40.0, "503": 10.0}
    assert _Service(since=0.0).requests_at(5.0) == {}  # no requests yet: no series, as in Istio


def test_a_scrape_without_histograms_exports_only_request_counters_and_notes_the_first_error() -> None:
    exporter = IstioTrafficExporter(histograms=False)
    try:
        exporter.set_traffic("api-v1", "shop", rps=10)
        exporter.set_traffic("api-v2", "shop", rps=10, error_ratio=0.5)
        text = exporter.render()
    finally:
        exporter.close()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert {line.split("{")[0] for line in samples} == {"istio_requests_total"}
    assert sum('destination_service_name="api-v2"' in line for line in samples) == 2
    assert sum('destination_service_name="api-v1"' in line for line in samples) == 1
    assert set(exporter.first_errors_scraped) == {("api-v2", "shop")}


def test_a_first_error_counts_as_scraped_only_once_the_scrape_was_delivered() -> None:
    for histograms in (False, True):
        exporter = IstioTrafficExporter(histograms=histograms)
        try:
            exporter.set_traffic("api-v2", "shop", rps=10, error_ratio=0.5)
            _text, at, errors_shown = exporter.scrape()
            assert exporter.first_errors_scraped == {}  # Prometheus could still hang up on it
            exporter.shown(at, errors_shown)
            first = exporter.first_errors_scraped[("api-v2", "shop")]
            exporter.shown(*exporter.scrape()[1:])
            assert exporter.first_errors_scraped == {("api-v2", "shop"): first}  # the first one stays
        finally:
            exporter.close()
