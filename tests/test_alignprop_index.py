"""AlignProp's gaussian draw in the repository's own terms: the truncation index, not K."""

from __future__ import annotations

import pytest

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients import get_estimator
from shortcut_diffusion.sampling.loop import Mode


def kept(estimator, steps: int) -> tuple[int, ...]:
    return tuple(i for i, mode in enumerate(estimator.plan(steps).modes) if mode is not Mode.DETACH)


@pytest.mark.parametrize("steps, index, k", [(50, 42, 8), (20, 15, 5), (10, 2, 8)])
def test_index_form_keeps_the_steps_of_its_k_form(steps, index, k):
    by_index = get_estimator(f"alignprop:draw=call,index_mean={index},index_std=5", seed=7)
    by_k = get_estimator(f"alignprop:draw=call,dist=gaussian,mean={k},std=5", seed=7)
    plans = [kept(by_index, steps) for _ in range(40)]
    assert plans == [kept(by_k, steps) for _ in range(40)]
    assert len(set(plans)) > 3  # the draw varies from call to call


def test_repository_numbers_keep_about_eight_final_steps():
    est = get_estimator("alignprop:draw=call,index_mean=42,index_std=5", seed=0)
    plans = [kept(est, 50) for _ in range(2000)]
    # the kept steps are those at or after the truncation index: a run of final steps
    assert all(p == tuple(range(50 - len(p), 50)) for p in plans)
    mean_kept = sum(map(len, plans)) / len(plans)
    assert 7.7 < mean_kept < 8.3


def test_index_form_round_trips_and_refuses_mixed_forms():
    est = get_estimator("alignprop:draw=call,index_mean=42,index_std=5")
    assert get_estimator(est.spec).params() == est.params()
    for spec, words in [
        ("alignprop:draw=call,index_mean=42,mean=8", "not both"),
        ("alignprop:draw=call,index_std=5", "index_std= goes with index_mean="),
        ("alignprop:draw=call,index_mean=42,std=5,index_std=5", "not both"),
        ("alignprop:index_mean=42", "use it with draw=call"),
    ]:
        with pytest.raises(UsageError, match=words):
            get_estimator(spec)
