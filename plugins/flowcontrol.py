"""Flow-control policy types, so a config can declare them under `plugins` and refer to them by name
from `flowControl.priorityBands[].fairnessPolicyRef` / `orderingPolicyRef` (see epp/config/flowcontrol.py)."""

from __future__ import annotations

from epp.scheduling.plugin import Marker


class GlobalStrictFairnessPolicy(Marker):
    """One global order across the flows of a band (by the band's ordering policy)."""

    type_name = "global-strict-fairness-policy"


class RoundRobinFairnessPolicy(Marker):
    """Flows of a band take turns, one request each."""

    type_name = "round-robin-fairness-policy"


class FcfsOrderingPolicy(Marker):
    """Within a flow, first come first served."""

    type_name = "fcfs-ordering-policy"


class EdfOrderingPolicy(Marker):
    """Within a flow, earliest deadline (arrival + TTL) first."""

    type_name = "edf-ordering-policy"
