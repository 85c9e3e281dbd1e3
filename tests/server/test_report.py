from fedadapt.server.report import bootstrap_diff, comparisons


def test_bootstrap_interval_brackets_the_mean_and_excludes_zero_for_a_clear_gain():
    a = [0.9, 0.8, 0.85, 0.95, 0.9, 0.8]
    b = [0.7, 0.6, 0.7, 0.75, 0.7, 0.65]
    r = bootstrap_diff(a, b)
    assert r["ci95_low"] <= r["mean_diff"] <= r["ci95_high"]
    assert r["ci95_low"] > 0 and r["clients"] == 6


def test_noise_gives_an_interval_over_zero():
    r = bootstrap_diff([0.5, 0.7, 0.6, 0.4], [0.6, 0.5, 0.6, 0.5])
    assert r["ci95_low"] < 0 < r["ci95_high"]


def test_comparisons_pair_by_client():
    per = {
        0: {"personalized_accuracy": 0.8, "local_only_accuracy": 0.7},
        1: {"personalized_accuracy": 0.9, "local_only_accuracy": 0.6},
    }
    c = comparisons(per, seed=0)
    assert c["personalized_vs_local_only"]["clients"] == 2
    assert abs(c["personalized_vs_local_only"]["mean_diff"] - 0.2) < 1e-9
