"""The router's demand book: what the autoscaler is told about each deployment (pure)."""

from services.router.core.demand import DemandBook, Phase


def test_concurrency_is_time_averaged_over_the_interval() -> None:
    book = DemandBook()
    book.report("d", 0.0)  # opens an interval at 0
    book.arrive("d", "a", 100, 0.0)
    book.arrive("d", "b", 50, 0.5)
    book.done("d", "a", 1.0)
    f = book.report("d", 1.0)
    # a: in for the whole second, b: for its second half -> 1.5 on average; one left now.
    assert abs(f.avg_concurrency - 1.5) < 1e-9
    assert (f.arrivals, f.prompt_tokens, f.queued) == (2, 150, 1)
    assert abs(f.avg_tokens - (100 + 25)) < 1e-9


def test_phases_are_counted_apart_and_a_new_interval_starts_empty() -> None:
    book = DemandBook()
    book.report("d", 0.0)
    for rid, phase in (("p1", Phase.PARKED), ("p2", Phase.PARKED), ("f", Phase.IN_FLIGHT)):
        book.arrive("d", rid, 10, 0.0)
        book.phase("d", rid, phase, 0.0)
    book.generated("d", "f", 7, 0.5)
    f = book.report("d", 1.0)
    assert (f.parked, f.in_flight, f.queued, f.completion_tokens) == (2, 1, 0, 7)
    assert book.parked("d") == 2
    g = book.report("d", 2.0)
    assert (g.arrivals, g.completion_tokens) == (0, 0)
    assert abs(g.avg_concurrency - 3.0) < 1e-9  # the three still there


def test_a_wake_goes_out_at_most_once_per_interval() -> None:
    book = DemandBook(wake_interval_s=1.0)
    assert book.should_wake("d", 10.0)
    assert not book.should_wake("d", 10.5)
    assert book.should_wake("d", 11.0)
    assert book.should_wake("other", 10.5)  # per deployment
