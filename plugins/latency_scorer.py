"""The predicted-TTFT scorer: scores from the producer's predictions (plugins/latency.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from epp.datastore.table import SlotArray
from epp.plugins.latency import KEY, PredictedTTFTProducer
from epp.plugins.peer_picks import Owners, PickRate, ReplicaPlace, reach, step_aside
from epp.plugins.pick_share import STARVED_PULL
from epp.scheduling.plugin import CycleState, Plugin, Scorer, Scores, require_non_negative

#: the share of predicted TTFT spent queueing past which prefix affinity starts to count (fully at 1); 0.5 let
#: groups spread over three endpoints each at twice a prefix-heavy pool's capacity (its p90 4x the blend's)
PRESSURE_ONSET = 0.2
#: the least pressure affinity counts with, so a group stays together while queues are short too (it was 0 while
#: one popular system prompt would pile onto its first holders; such a prefix is common now and pulls nowhere)
AFFINITY_FLOOR = 0.1
_ONE = np.array(1.0)  # a 0-d operand numpy need not convert from a Python float on every call
_sum = np.add.reduce


@dataclass
class ScorerParameters:
    #: how much longer a warm endpoint may take under pressure: its predicted TTFT counts 1 + prefixAffinity x
    #: pressure x (the fraction of the prompt's blocks it holds beyond the coldest candidate) times less
    prefix_affinity: float = 8.0
    #: weight of the predicted decode time (time per output token x expected output tokens) added to the TTFT
    decode_weight: float = 0.0

    def validate(self) -> None:
        require_non_negative("prefixAffinity", self.prefix_affinity)
        require_non_negative("decodeWeight", self.decode_weight)


class PredictedTTFTScorer(Scorer):
    """fastest / this candidate's predicted TTFT (1 for the best, towards 0 for slower), plus the recomputation a
    KV overflow there would cause, minus what it would save by holding the common prefix it lacks; under
    pressure a warm candidate's prediction is divided by 1 + prefixAffinity x pressure x max(0, held - common).

    The prediction already prices what the prefix saves this request; the affinity also prices what a miss
    costs later ones: the copy it makes takes cache from other prefixes, and a prefix spread over several
    endpoints is evicted sooner from each. That matters once the pool is pressed: `pressure` is the share of
    the candidates' predicted TTFT spent queueing, mapped from [PRESSURE_ONSET, 1] to [0, 1], at least
    AFFINITY_FLOOR. An idle or lightly loaded pool routes almost on the prediction alone; an overloaded one
    keeps a group of requests where its prefix is until that endpoint is clearly slower (a ratio holds under
    overload, where a margin in seconds would not). Only what sets a candidate apart counts (held beyond the
    common prefix): a prefix most candidates hold, or that more traffic passes through than its holders can
    carry (one system prompt for all), pulls nowhere, and an endpoint that has not got it yet is not shut out
    for lacking it."""

    type_name = "predicted-ttft-scorer"
    Parameters = ScorerParameters
    bounded = True
    consumes = PredictedTTFTProducer.type_name

    def __init__(self, name: str, parameters: ScorerParameters) -> None:
        super().__init__(name, parameters)
        self.affinity = parameters.prefix_affinity
        self.decode_weight = parameters.decode_weight
        self.producer: PredictedTTFTProducer | None = None
        #: with --shared-state: this replica's rank, the live replicas and how late their picks are seen here; close
        #: calls then go to this replica's own part of the pool (plugins/peer_picks.py)
        self.replica_place: ReplicaPlace | None = None
        self.pick_rate = PickRate()
        self.owners = Owners()

    def connect(self, plugins: Mapping[str, Plugin]) -> None:
        """Find the producer whose decode model the decode term reads."""
        producers = [p for p in plugins.values() if isinstance(p, PredictedTTFTProducer)]
        self.producer = producers[0] if producers else None
        if self.producer is not None and self.decode_weight > 0:
            self.producer.decode_used = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        prediction = state.read(KEY)
        if prediction is None:
            return np.ones(len(candidates))
        seconds = prediction.at(candidates, prediction.seconds)  # > 0: every prediction has a prefill term
        if prediction.overflow is not None:
            seconds = seconds + prediction.at(candidates, prediction.overflow)
        if prediction.lift is not None:
            seconds = seconds - prediction.at(candidates, prediction.lift)
        if self.decode_weight > 0 and self.producer is not None:
            decode = self.producer.decode_seconds(state, prediction)
            seconds = seconds + self.decode_weight * prediction.at(candidates, decode)
        discount: float | np.ndarray = 1.0
        if self.affinity > 0 and prediction.affine:  # (not affine: every candidate's discount would be 1)
            # the pool's pressure: the share of the predicted TTFTs that is queueing (0 idle, towards 1 overloaded)
            # np.add.reduce is what ndarray.sum calls, without the Python wrapper around it (the same bits)
            pressure = float(_sum(prediction.queueing)) / max(float(_sum(prediction.seconds)), 1e-9)
            pressure = max((pressure - PRESSURE_ONSET) / (1.0 - PRESSURE_ONSET), AFFINITY_FLOOR)
            if pressure > 0:
                apart = prediction.at(candidates, prediction.held)
                if prediction.common:
                    apart = np.maximum(apart - prediction.common, 0.0)
                discount = (self.affinity * pressure) * apart
                discount += _ONE
                seconds = seconds / discount
        if prediction.shortfall is not None:  # a candidate short of its share of the picks (plugins/pick_share.py)
            seconds = seconds / (STARVED_PULL * prediction.at(candidates, prediction.shortfall) + _ONE)
        if self.replica_place is not None and self.producer is not None:
            self.pick_rate.pick(self.producer.clock())
            rank, replicas, staleness = self.replica_place()
            share = reach(replicas, staleness, self.pick_rate.per_second())
            if share > 0:  # one request's own prefill there, the cost of a collision
                per_pick = prediction.at(candidates, prediction.uncached * prediction.per_token) / discount
                owners = self.owners.of(state.table, replicas).take(candidates)
                seconds = step_aside(seconds, per_pick, owners, rank, share)
        result: Scores = seconds[seconds.argmin()] / seconds
        return result
