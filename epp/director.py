"""The director: from a parsed request to a routing decision, and the bookkeeping around it.

Order (reference §2.4): model and rewrite → objective (priority) → admission → candidates (subset
hint) → scheduler → pre-request hooks and in-flight accounting. Completion releases what the pick
took. Pure and synchronous: no I/O, no clock reads beyond `time.perf_counter` for metrics and `time.monotonic` to
compare with the scrape times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from epp.datastore.table import EndpointTable, SlotArray
from epp.errors import EppError
from epp.observability.extension import record_scheduler_attempt, record_scheduler_e2e
from epp.requests.openai import ParsedBody, rewrite_model
from epp.scheduling.types import (
    LLMRequest,
    ProfileResult,
    RequestHooks,
    Scheduler,
    SchedulingError,
    SchedulingResult,
    Usage,
)

if TYPE_CHECKING:
    from epp.observability.decisions import DecisionLog

OBJECTIVE_HEADER = "x-gateway-inference-objective"
REWRITE_HEADER = "x-gateway-model-name-rewrite"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
DEFAULT_FAIRNESS_ID = "default-flow"
NO_CANDIDATES = "failed to find endpoint candidates for serving the request"
#: predicted output tokens per input token for in-flight token accounting (reference inflight-load-producer)
OUTPUT_TOKEN_RATIO = 1.5


class ModelRouting(Protocol):
    """Model resolution from Kubernetes objects (InferenceModelRewrite, v1alpha2 InferenceModel); see epp.k8s."""

    def rewrite(self, model: str) -> tuple[str, str] | None:
        """(target model, rewrite name) when a rewrite rule applies to the incoming model."""

    def model_priority(self, model: str) -> int | None:
        """Priority of the v1alpha2 InferenceModel for this model name, if there is one."""

    def restrict(self, target_model: str, candidates: SlotArray) -> SlotArray:
        """The candidates that serve the target model (all of them when that is not known)."""


@dataclass(slots=True)
class Prepared:
    request: LLMRequest
    subset: Sequence[str] | None
    new_body: bytes | None
    candidates: SlotArray
    #: table generation the candidates were computed at
    generation: int


class Charge(NamedTuple):
    """One request, `tokens` (input plus estimated output) and `prompt_tokens` added to a slot's in-flight
    columns. `epoch` is the slot's at the pick: a slot whose endpoint left (another may hold it now) is neither
    released nor given the request's pre-request hooks."""

    slot: int
    tokens: float
    prompt_tokens: float
    epoch: float


@dataclass
class Decision:
    request: LLMRequest
    result: SchedulingResult
    #: `ip:port[,ip:port...]`, primary first
    destination: str
    #: the body to send upstream, or None when it is unchanged
    new_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: what the pick added to the in-flight columns, released on completion: the primary endpoint, then
    #: the prefill endpoint of a disaggregated pick (one request and the prompt's tokens)
    charges: tuple[Charge, ...] = ()
    released: bool = False
    #: pre-request hooks still to run (the director defers them until the response has been sent)
    hooks_pending: bool = False
    #: time.monotonic() of the pick, and whether the first response chunk has been seen since
    picked_at: float = 0.0
    first_chunk_seen: bool = False

    @property
    def charged_slot(self) -> int:
        return self.charges[0].slot if self.charges else -1

    @property
    def charged_prefill_slot(self) -> int:
        return self.charges[1].slot if len(self.charges) > 1 else -1


class Director:
    def __init__(
        self,
        table: EndpointTable,
        scheduler: Scheduler,
        hooks: RequestHooks | None = None,
        subset_filter: bool = True,
        objectives: Mapping[str, int] | None = None,
        saturation: Callable[[SlotArray], float] | None = None,
        shed_sheddable: bool = True,
        on_release: Callable[[], None] | None = None,
        models: ModelRouting | None = None,
        defer_hooks: bool = False,
        decisions: DecisionLog | None = None,
        unreachable_after_s: float | None = None,
    ) -> None:
        self.table = table
        self.scheduler = scheduler
        self.hooks = hooks
        self.subset_filter = subset_filter
        #: InferenceObjective name → priority (filled by Kubernetes discovery; empty when standalone)
        self.objectives: Mapping[str, int] = objectives if objectives is not None else {}
        #: callable(candidates) -> float in [0, ∞); ≥ 1.0 means saturated (sheddable requests are dropped)
        self.saturation = saturation
        #: legacy admission (flow control off): drop priority < 0 requests while saturated
        self.shed_sheddable = shed_sheddable
        #: called after a request releases its load (flow control dispatches the next waiting one)
        self.on_release = on_release
        #: rewrites and served-model candidates (Kubernetes discovery); None when standalone
        self.models = models
        #: namespace of the pool's pods (the `namespace` label of scheduler attempts; "" when standalone)
        self.namespace = ""
        #: run pre-request hooks (e.g. the prefix index insert) only when `run_deferred_hooks` is called,
        #: which the ext_proc stream does once the pick's response is on its way (the reference runs them
        #: asynchronously too); off, they run inside the pick
        self.defer_hooks = defer_hooks
        #: where each decision is recorded for /debug/decisions (None: not recorded)
        self.decisions = decisions
        #: an endpoint scraped before whose scrapes have all failed for this long (killed, frozen, partitioned) gets
        #: no new requests while another candidate is reachable; None: never (the reference's default profile
        #: routes to it until discovery removes it, failing every request sent there meanwhile)
        self.unreachable_after_s = unreachable_after_s
        self._ip_index: tuple[int, dict[str, list[int]]] = (-1, {})
        self._labels_by_slot: tuple[int, dict[int, tuple[str, str]]] = (-1, {})
        self._rng = random.Random()
        #: the clock picks and first chunks are timed with (a virtual one in the routing simulation)
        self.clock: Callable[[], float] = time.monotonic

    # --- request path ---------------------------------------------------------------------------

    def decide(
        self,
        request_id: str,
        headers: Mapping[str, str],
        parsed: ParsedBody | None,
        raw_body: bytes,
        subset: Sequence[str] | None,
    ) -> Decision:
        """Route a request whose body is complete. Raises EppError with the reference code."""
        return self.schedule(self.prepare(request_id, headers, parsed, raw_body, subset))

    def prepare(
        self,
        request_id: str,
        headers: Mapping[str, str],
        parsed: ParsedBody | None,
        raw_body: bytes,
        subset: Sequence[str] | None,
        flow_control: bool = False,
    ) -> Prepared:
        """Everything before the pick: model, rewrite, objective, admission, candidates.

        With `flow_control` the request goes through flow-control admission next, before the candidates
        are checked (reference §2.4): none yet is no error here, it waits in the queue (an empty pool is
        saturated; scale-from-zero) and `schedule` looks again."""
        model = parsed.model if parsed else ""
        pinned = headers.get(REWRITE_HEADER)
        target = pinned or model
        objective = headers.get(OBJECTIVE_HEADER, "")
        priority = self.objectives.get(objective)
        routing = self.models
        if routing is not None and model:
            rewritten = None if pinned else routing.rewrite(model)
            if rewritten is not None:
                target = rewritten[0]
            if priority is None:
                priority = routing.model_priority(model)
        request = LLMRequest(
            request_id=request_id,
            model=model,
            target_model=target,
            headers=headers,
            api=parsed.api if parsed else "",
            prompt_bytes=parsed.prompt_bytes if parsed else b"",
            cache_salt=parsed.cache_salt if parsed else "",
            stream=parsed.stream if parsed else False,
            priority=priority or 0,
            fairness_id=headers.get(FAIRNESS_HEADER) or DEFAULT_FAIRNESS_ID,
            objective=objective,
            body_size=len(raw_body),
            body=parsed.body if parsed else None,
        )
        candidates = self._serving(target, self.candidates(subset))
        if (
            self.shed_sheddable
            and request.priority < 0
            and self.saturation is not None
            and self.saturation(candidates) >= 1.0
        ):
            raise self._refused(request, EppError("ResourceExhausted", "system saturated, sheddable request dropped"))
        if len(candidates) == 0 and not flow_control:
            raise self._refused(request, EppError("ServiceUnavailable", NO_CANDIDATES))
        new_body = rewrite_model(parsed.body, target) if parsed and target != model else None
        return Prepared(request, subset, new_body, candidates, self.table.generation)

    def schedule(self, prepared: Prepared) -> Decision:
        """The pick itself (after any wait in flow control, when membership may have changed)."""
        candidates = prepared.candidates
        if prepared.generation != self.table.generation:
            candidates = self._serving(prepared.request.target_model, self.candidates(prepared.subset))
        if len(candidates) == 0:
            raise self._refused(prepared.request, EppError("ServiceUnavailable", NO_CANDIDATES))
        started = time.perf_counter()
        try:
            result = self.scheduler.schedule(prepared.request, self.table, candidates)
        except SchedulingError as exc:
            record_scheduler_attempt("failure", prepared.request.target_model)
            if self.decisions is not None:
                self.decisions.record_failure(prepared.request, str(exc), exc.trace)
            raise EppError("ResourceExhausted", f"failed to find target endpoint: {exc}") from None
        record_scheduler_e2e(time.perf_counter() - started)
        pod, port = self._attempt_labels(result.primary.item(0))
        record_scheduler_attempt("success", prepared.request.target_model, pod, self.namespace, port)
        decision = self._commit(prepared.request, result, prepared.new_body)
        if self.decisions is not None:
            self.decisions.record(
                decision.request, decision.destination, result.primary_profile, result.profile_results
            )
        return decision

    def _refused(self, request: LLMRequest, error: EppError) -> EppError:
        """`error`, recorded first for /debug/decisions (refused before any profile ran)."""
        if self.decisions is not None:
            self.decisions.record_failure(request, f"{error.code}: {error.message}", None, method="admission")
        return error

    def decide_header_only(self, request_id: str, headers: Mapping[str, str], subset: Sequence[str] | None) -> Decision:
        """A request without a body (e.g. GET): a uniformly random endpoint, as the reference does."""
        if len(self.table) == 0:
            raise EppError("Internal", "no pods available in datastore")
        candidates = self.candidates(subset)
        if len(candidates) == 0:
            raise EppError("ServiceUnavailable", NO_CANDIDATES)
        slot = candidates[self._rng.randrange(len(candidates))]
        request = LLMRequest(request_id=request_id, model="", target_model="", headers=headers, api="")
        result = SchedulingResult({"default": ProfileResult(np.array([slot], dtype=np.intp))}, "default")
        decision = self._commit(request, result, None, run_hooks=False)
        if self.decisions is not None:
            self.decisions.record(request, decision.destination, "default", result.profile_results, method="random")
        return decision

    def candidates(self, subset: Sequence[str] | None) -> SlotArray:
        live = self.table.live_slots()
        if subset is None or not self.subset_filter:
            return self._reachable(live)
        index = self._slots_by_ip()
        slots = sorted({slot for hint in subset for slot in index.get(_ip_of(hint), ())})
        return self._reachable(np.array(slots, dtype=np.intp))

    def _reachable(self, candidates: SlotArray) -> SlotArray:
        """`candidates` without those whose last good scrape is older than `unreachable_after_s` (never-scraped
        ones stay: they have just joined); all of them when none would be left."""
        limit = self.unreachable_after_s
        if limit is None or len(candidates) < 2:
            return candidates
        scraped = self.table.metrics_time[candidates]
        lost = scraped < time.monotonic() - limit
        lost &= scraped > 0.0
        count = np.count_nonzero(lost)
        if count == 0 or count == len(candidates):
            return candidates
        return candidates[~lost]

    def _serving(self, target_model: str, candidates: SlotArray) -> SlotArray:
        routing = self.models
        return candidates if routing is None or not target_model else routing.restrict(target_model, candidates)

    def _attempt_labels(self, slot: int) -> tuple[str, str]:
        """The pod and port labels of a scheduler attempt that picked `slot` (kept until membership changes)."""
        generation, labels = self._labels_by_slot
        if generation != self.table.generation:
            labels = {}
            self._labels_by_slot = (self.table.generation, labels)
        found = labels.get(slot)
        if found is None:
            endpoint = self.table.endpoint(slot)
            found = labels[slot] = (endpoint.key, str(endpoint.port))
        return found

    def _slots_by_ip(self) -> dict[str, list[int]]:
        generation, index = self._ip_index
        if generation != self.table.generation:
            index = {}
            for slot, endpoint in self.table.items():
                index.setdefault(endpoint.address, []).append(slot)
            self._ip_index = (self.table.generation, index)
        return index

    def _commit(
        self, request: LLMRequest, result: SchedulingResult, new_body: bytes | None, run_hooks: bool = True
    ) -> Decision:
        slots = result.primary
        hostports = self.table.hostports
        primary = slots.item(0)
        destination = hostports[primary] if len(slots) == 1 else ",".join([hostports[s] for s in slots.tolist()])
        prompt_tokens = float(request.estimated_input_tokens) if request.body_size else 0.0
        charges = [self._charge(primary, prompt_tokens * (1.0 + OUTPUT_TOKEN_RATIO), prompt_tokens)]
        prefill = result.prefill
        if prefill is not None and int(prefill.slots[0]) != primary:
            # the prefill server works on the prompt only (its KV then moves to the decode server)
            charges.append(self._charge(int(prefill.slots[0]), prompt_tokens, prompt_tokens))
        decision = Decision(request, result, destination, new_body, dict(result.headers), tuple(charges))
        decision.picked_at = self.clock()
        if run_hooks and self.hooks is not None:
            if self.defer_hooks:
                decision.hooks_pending = True
            else:
                self.hooks.pre_request(request, result, self.table)
        return decision

    def run_deferred_hooks(self, decision: Decision) -> None:
        if decision.hooks_pending:
            decision.hooks_pending = False
            if self.hooks is not None and self._still_held(decision):
                self.hooks.pre_request(decision.request, decision.result, self.table)

    def _charge(self, slot: int, tokens: float, prompt_tokens: float) -> Charge:
        table = self.table
        # .item() and a Python float add: the same sums as numpy's, without a numpy scalar per column
        requests, total, prompt = table.inflight_requests, table.inflight_tokens, table.inflight_prompt_tokens
        requests[slot] = requests.item(slot) + 1.0
        total[slot] = total.item(slot) + tokens
        prompt[slot] = prompt.item(slot) + prompt_tokens
        if table.load_listener is not None:
            table.load_listener()
        return Charge(slot, tokens, prompt_tokens, table.epoch.item(slot))

    def _still_held(self, decision: Decision) -> bool:
        """Every charged slot still holds the endpoint the pick chose."""
        epoch = self.table.epoch
        charges = decision.charges
        if len(charges) == 1:  # the usual case, without a generator's frame
            return epoch.item(charges[0].slot) == charges[0].epoch
        return all(epoch.item(charge.slot) == charge.epoch for charge in charges)

    # --- completion -------------------------------------------------------------------------------

    def _release(self, charge: Charge) -> None:
        # The endpoint may have left (its load went with it) and its slot been reused: only release
        # what is still ours.
        slot = charge.slot
        table = self.table
        requests = table.inflight_requests
        if table.epoch.item(slot) == charge.epoch and requests.item(slot) >= 1.0:
            total, prompt = table.inflight_tokens, table.inflight_prompt_tokens
            requests[slot] = requests.item(slot) - 1.0
            total[slot] = max(0.0, total.item(slot) - charge.tokens)
            prompt[slot] = max(0.0, prompt.item(slot) - charge.prompt_tokens)
            if table.load_listener is not None:
                table.load_listener()

    def first_chunk(self, decision: Decision, streamed: bool) -> None:
        """The first chunk of the response body arrived (`streamed`: as server-sent events, so it carries the
        first token and the time since the pick is the request's TTFT as the EPP sees it)."""
        if decision.first_chunk_seen or decision.released:
            return
        decision.first_chunk_seen = True
        if self.hooks is not None and decision.request.api and self._still_held(decision):
            ttft = self.clock() - decision.picked_at if streamed else None
            self.hooks.first_response(decision.request, decision.result, ttft)
            if self.table.load_listener is not None:  # plugins release queued prefill at the first chunk
                self.table.load_listener()

    def response_chunk(self, decision: Decision) -> None:
        """A chunk of a streamed response body after the first arrived (the endpoint ended an engine step)."""
        if self.hooks is not None and not decision.released and decision.request.api:
            self.hooks.response_chunk(decision.result)

    def complete(self, decision: Decision, usage: Usage | None) -> None:
        """The response ended (or the stream did): release in-flight load and run completion hooks once."""
        if decision.released:
            return
        decision.released = True
        self.run_deferred_hooks(decision)
        for charge in decision.charges:
            self._release(charge)
        if self.hooks is not None and decision.request.api:
            self.hooks.response_complete(decision.request, decision.result, usage, self.table)
        if self.on_release is not None:
            self.on_release()


def _ip_of(hostport: str) -> str:
    """`10.0.0.1:8000` → `10.0.0.1`; `[::1]:8000` → `::1`; a bare IP stays as it is."""
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")]
    if hostport.count(":") == 1:
        return hostport.rsplit(":", 1)[0]
    return hostport
