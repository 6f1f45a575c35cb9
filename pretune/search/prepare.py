"""What a search does before its first trial: the learning-rate range test, the plan, priors.

``run_tune`` calls these in order:

1. ``cached_lr_range``: the range test a previous start of the same search ran (plan.yaml), so a
   continued search neither repeats it nor moves its lr range.
2. ``lr_range``: a new search runs the test once (``training.lr_range``) and records it.
3. ``search_space``: the default lr range is centered on the test's suggestion when the user
   neither pinned lr nor gave its range.
4. ``planning.make_plan`` turns the test's step timing into the budget plan (recorded, logged).
5. ``priors.enqueue`` queues the known recipes in a new study.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pretune.config import Budget, RunConfig, TuneConfig
from pretune.errors import PretuneError
from pretune.search import planning, rundir
from pretune.search.space import Dimension

log = logging.getLogger(__name__)


def cached_lr_range(out) -> dict[str, Any] | None:
    found = rundir.read_plan(out).get("lr_range")
    return found if isinstance(found, dict) else None


LR_TEST_SHARE = 0.05  # the most of a time budget the range test may take


def lr_range(out, base: RunConfig, task, tune: TuneConfig, budget: Budget, caches=None
             ) -> dict[str, Any] | None:
    """Run the range test on ``base`` (the settings every trial shares) and record it in
    plan.yaml; it takes at most ``LR_TEST_SHARE`` of a time budget. A test that breaks for a
    reason other than the user's input is logged and skipped: the search then runs on the
    default range."""
    from pretune.training.lr_range import range_test  # torch loads only when this runs

    limit = None if budget.seconds is None else LR_TEST_SHARE * budget.seconds
    try:
        found = range_test(base, task, steps=tune.lr_range_steps, max_seconds=limit,
                           caches=caches).to_dict()
    except PretuneError:
        raise
    except Exception as err:  # noqa: BLE001 - the search does not need the test to go on
        log.warning("the learning-rate range test failed (%s: %s); searching the default range",
                    type(err).__name__, err)
        return None
    rundir.update_plan(out, lr_range=found)
    log.info("learning-rate range test: %d steps, lowest loss at lr %s; suggests %s",
             found["steps"], found["lr_at_min"], found["suggested"])
    return found


def search_space(dims: tuple[Dimension, ...], spec: Mapping[str, Any] | None,
                 pinned: Mapping[str, Any], found: Mapping[str, Any] | None
                 ) -> tuple[Dimension, ...]:
    """``dims`` with the lr range centered on the range test's suggestion, where allowed."""
    if not found or not planning.lr_is_free(dims, spec, pinned):
        return dims
    return planning.center_lr(dims, found.get("suggested"))


def hidden_size(base: RunConfig) -> int | None:
    """The model's width from its config.json (no weights loaded); None when unknown."""
    from pretune.models.load import load_config, resolve_source  # torch loads only when this runs

    try:
        source, is_local = resolve_source(base.model.model)
        config = load_config(source, is_local=is_local, revision=base.model.revision,
                             trust_remote_code=base.model.trust_remote_code)
    except PretuneError:
        return None
    for name in ("hidden_size", "d_model", "dim", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
