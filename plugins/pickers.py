"""Pickers: take the best `maxNumOfEndpoints` candidates (the rest of the list are fallbacks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from epp.datastore.table import SlotArray
from epp.scheduling.plugin import CycleState, Picker, Scores


@dataclass
class PickerParameters:
    max_num_of_endpoints: int = 1

    def validate(self) -> None:
        if self.max_num_of_endpoints <= 0:
            self.max_num_of_endpoints = 1  # reference: ≤ 0 means 1


class _Base(Picker):
    Parameters = PickerParameters

    def __init__(self, name: str, parameters: PickerParameters) -> None:
        super().__init__(name, parameters)
        self.count = parameters.max_num_of_endpoints
        self.rng = np.random.default_rng()


class MaxScorePicker(_Base):
    """Highest scores first; equal scores in uniformly random order (shuffle, then stable sort)."""

    type_name = "max-score-picker"

    def pick(self, state: CycleState, candidates: SlotArray, scores: Scores) -> SlotArray:
        if self.count == 1:
            best = (scores == scores[scores.argmax()]).nonzero()[0]  # (.max() costs 5x argmax in its wrapper)
            choice = best[0] if len(best) == 1 else best[self.rng.integers(len(best))]
            return candidates[choice : choice + 1]
        shuffled = self.rng.permutation(len(candidates))
        order = shuffled[np.argsort(-scores[shuffled], kind="stable")]
        return candidates[order[: self.count]]


class RandomPicker(_Base):
    type_name = "random-picker"

    def pick(self, state: CycleState, candidates: SlotArray, scores: Scores) -> SlotArray:
        count = min(self.count, len(candidates))
        return candidates[self.rng.choice(len(candidates), count, replace=False)]


class WeightedRandomPicker(_Base):
    """A-Res (Efraimidis-Spirakis): key = U^(1/score), top keys win; all scores 0 → uniform."""

    type_name = "weighted-random-picker"

    def pick(self, state: CycleState, candidates: SlotArray, scores: Scores) -> SlotArray:
        count = min(self.count, len(candidates))
        if not (scores > 0).any():
            return candidates[self.rng.choice(len(candidates), count, replace=False)]
        uniform = np.maximum(self.rng.random(len(candidates)), 1e-10)
        keys = np.zeros(len(candidates))
        positive = scores > 0
        keys[positive] = uniform[positive] ** (1.0 / scores[positive])
        return candidates[np.argsort(-keys, kind="stable")[:count]]
