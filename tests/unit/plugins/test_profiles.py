"""The multi-profile loop of the framework with a handler of its own: order, termination, primary, errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from epp.config.schema import load_config_text
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.framework import SchedulerRuntime, build_scheduler
from epp.scheduling.plugin import CycleState, ProfileHandler
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult
from tests.support.plugins import pool, request

TWO = """
plugins:
- {type: disagg-profile-handler}
- {type: queue-scorer}
- {type: label-selector-filter, name: only-b, parameters: {matchLabels: {group: b}}}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: queue-scorer}]}
- {name: b, plugins: [{pluginRef: only-b}, {pluginRef: queue-scorer}]}
"""


class EveryProfileBPrimary(ProfileHandler):
    """Runs every profile, one per round (asking again for ones already run), and makes `b` primary."""

    type_name = "test-every-profile"

    def __init__(self, ask_for: str | None = None) -> None:
        super().__init__(self.type_name, None)
        self.rounds: list[list[str]] = []
        self.ask_for = ask_for

    def pick_profiles(
        self,
        state: CycleState,
        candidates: SlotArray,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        if self.ask_for is not None:
            return [self.ask_for]
        remaining = [p for p in profiles if p not in results]
        self.rounds.append(list(results))
        return [*results, *remaining[:1]]  # already-run names are ignored by the loop

    def process_results(self, state: CycleState, results: Mapping[str, ProfileResult | None]) -> SchedulingResult:
        picked = {name: result for name, result in results.items() if result is not None}
        if "b" not in picked:
            raise SchedulingError("profile b found nothing")
        return SchedulingResult(picked, "b")


def scheduler_with(handler: ProfileHandler, labels: list[dict[str, str]]) -> tuple[SchedulerRuntime, EndpointTable]:
    config = load_config_text(TWO, "t")
    config.plugins["disagg-profile-handler"].plugin = handler
    table = pool(len(labels), labels)
    return build_scheduler(config, table), table


def test_loop_runs_profiles_in_handler_order_until_it_asks_for_nothing_new() -> None:
    handler = EveryProfileBPrimary()
    scheduler, table = scheduler_with(handler, [{"group": "a"}, {"group": "b"}])
    result = scheduler.schedule(request(), table, table.live_slots())
    assert handler.rounds == [[], ["decode"], ["decode", "b"]]
    assert result.primary_profile == "b" and list(result.primary) == [1]
    assert set(result.profile_results) == {"decode", "b"}


def test_a_profile_that_finds_nothing_is_reported_to_the_handler_as_none() -> None:
    scheduler, table = scheduler_with(EveryProfileBPrimary(), [{"group": "a"}])
    with pytest.raises(SchedulingError, match="profile b found nothing"):
        scheduler.schedule(request(), table, table.live_slots())


def test_unknown_profile_from_a_handler_is_an_error() -> None:
    scheduler, table = scheduler_with(EveryProfileBPrimary(ask_for="nope"), [{"group": "b"}])
    with pytest.raises(SchedulingError, match="asked for unknown profile 'nope'"):
        scheduler.schedule(request(), table, table.live_slots())
