"""The status page of the metrics port (`/debug`): one self-contained HTML page for a person in a browser,
after HAProxy's stats page: the pool, a row per endpoint with load bars, the recent decisions with each
candidate's scores. No script and no external asset; it reloads itself every few seconds (`?refresh=0`
stops that). Rendered from the same documents /debug/endpoints and /debug/decisions serve, so the page and
the JSON never disagree.
"""

from __future__ import annotations

from html import escape
from typing import Any

#: decisions shown on the page, and candidates per decision
PAGE_DECISIONS = 20
PAGE_CANDIDATES = 8

_STYLE = """
body{font:12px/1.35 Verdana,Arial,sans-serif;margin:0;background:#fff;color:#000}
h1{font-size:16px;margin:0;padding:6px 10px;background:#20377a;color:#fff}
h2{font-size:13px;margin:14px 10px 4px;color:#20377a}
.info{display:flex;gap:28px;padding:6px 10px;background:#eef;border-bottom:1px solid #99b}
.info b{color:#20377a}
table{border-collapse:collapse;margin:0 10px;min-width:calc(100% - 20px)}
th{background:#20377a;color:#fff;font-weight:normal;padding:3px 6px;text-align:left;white-space:nowrap}
td{padding:2px 6px;border-bottom:1px solid #ccd;vertical-align:top;white-space:nowrap}
tr.up td{background:#c0ffc0}tr.stale td{background:#ffd020}tr.never td{background:#ff9090}
tr.dec td{background:#f4f4ff}tr.fail td{background:#ffc0c0}
.bar{display:inline-block;width:90px;height:10px;border:1px solid #777;background:#fff;vertical-align:middle}
.bar i{display:block;height:100%;background:#4a6ed0}.bar i.ok{background:#3a6}.bar i.hi{background:#d93}
.bar i.full{background:#c33}
.num{display:inline-block;min-width:44px;text-align:right;margin-left:4px;font-family:monospace}
.lbl{font-family:monospace;color:#335}.win{font-weight:bold}.mono{font-family:monospace}
.small{color:#555;font-size:11px}a{color:#20377a}
details summary{cursor:pointer}
table.inner{margin:4px 0 2px;min-width:0}table.inner td,table.inner th{padding:1px 5px}
table.inner th{background:#5a6fae}
"""


def _bar(value: float, scale: float, text: str, absolute: bool = False) -> str:
    """A bar of value/scale; an absolute one (KV cache use) turns orange from 60 % and red from 90 %, a relative
    one (compared with the busiest endpoint) keeps one colour."""
    fraction = 0.0 if scale <= 0 else min(max(value / scale, 0.0), 1.0)
    kind = ("full" if fraction >= 0.9 else "hi" if fraction >= 0.6 else "ok") if absolute else ""
    return (
        f'<span class="bar"><i class="{kind}" style="width:{fraction * 100:.0f}%"></i></span>'
        f'<span class="num">{escape(text)}</span>'
    )


def _number(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _endpoint_rows(endpoints: list[dict[str, Any]]) -> str:
    if not endpoints:
        return '<tr><td colspan="10">no endpoints</td></tr>'
    top_queue = max(max(e["load"]["waiting_queue"] for e in endpoints), 1.0)
    top_running = max(max(e["load"]["running_requests"] for e in endpoints), 1.0)
    top_inflight = max(max(e["in_flight"]["requests"] for e in endpoints), 1.0)
    rows = []
    for e in endpoints:
        age = e["metrics_age_seconds"]
        state = "never" if age is None else "stale" if e["metrics_stale"] else "up"
        age_text = "never scraped" if age is None else f"{age:.2f} s"
        labels = " ".join(f"{escape(k)}={escape(v)}" for k, v in sorted(e["labels"].items()))
        blocks = ", ".join(f"{b:,}" for b in e["prefix_blocks"].values()) or "-"
        load = e["load"]
        kv_text = f"{load['kv_cache_usage'] * 100:.0f}%"
        rows.append(
            f'<tr class="{state}"><td class="win">{escape(e["name"] or e["endpoint"])}</td>'
            f'<td class="mono">{escape(e["endpoint"])}</td><td class="lbl">{labels}</td>'
            f"<td>{_bar(load['waiting_queue'], top_queue, _number(load['waiting_queue']))}</td>"
            f"<td>{_bar(load['running_requests'], top_running, _number(load['running_requests']))}</td>"
            f"<td>{_bar(load['kv_cache_usage'], 1.0, kv_text, absolute=True)}</td>"
            f"<td>{_bar(e['in_flight']['requests'], top_inflight, _number(e['in_flight']['requests']))}</td>"
            f"<td>{escape(age_text)}</td><td>{_number(e['scrape_errors'])}</td><td>{escape(blocks)}</td></tr>"
        )
    return "".join(rows)


def _label(candidate: dict[str, Any]) -> str:
    return escape(candidate["name"] or candidate["endpoint"])


def _profile_detail(name: str, profile: dict[str, Any]) -> str:
    scorers = profile.get("scorers", [])
    head = "".join(f"<th>{escape(s['name'])} &times;{_number(s['weight'])}</th>" for s in scorers)
    picked = set(profile.get("picked", []))
    rows = []
    for c in profile.get("candidates", [])[:PAGE_CANDIDATES]:
        cells = "".join(f"<td>{c['scores'][s['name']]:.3f}</td>" for s in scorers)
        mark = ' class="win"' if c["endpoint"] in picked else ""
        rows.append(f"<tr><td{mark}>{_label(c)}</td>{cells}<td{mark}>{c['total']:.3f}</td></tr>")
    more = profile.get("candidates_total", 0) - min(len(profile.get("candidates", [])), PAGE_CANDIDATES)
    filters = "; ".join(f"{escape(f['name'])}: {f['in']} → {f['kept']}" for f in profile.get("filters", []))
    picker = profile.get("picker", {}).get("name", "")
    return (
        f'<div class="small">profile <b>{escape(name)}</b>; filters: {filters or "none"}; picker {escape(picker)}'
        f"{f'; {more} more candidates in /debug/decisions' if more > 0 else ''}</div>"
        f'<table class="inner"><tr><th>candidate</th>{head}<th>total</th></tr>{"".join(rows)}</table>'
    )


def _decision_rows(decisions: list[dict[str, Any]]) -> str:
    if not decisions:
        return '<tr><td colspan="6">no decisions yet</td></tr>'
    rows = []
    for index, d in enumerate(decisions[:PAGE_DECISIONS]):
        failed = d["outcome"] == "failed"
        model = d["model"] if d["model"] == d["target_model"] else f"{d['model']} → {d['target_model']}"
        primary = d["profiles"].get(d["primary_profile"], {})
        best = primary.get("candidates", [])[:3]
        summary = ", ".join(f"{_label(c)} {c['total']:.3f}" for c in best) or escape(d["method"])
        details = "".join(_profile_detail(n, p) for n, p in d["profiles"].items() if "candidates" in p)
        winner = next((c for c in primary.get("candidates", []) if c["endpoint"] == d["destination"]), None)
        sent = (
            f"{_label(winner)} ({escape(d['destination'])})" if winner and winner["name"] else escape(d["destination"])
        )
        outcome = escape(d.get("error", "")) if failed else f'<span class="win">{sent}</span>'
        opened = " open" if index == 0 else ""  # the newest decision shows every scorer's score
        body = f"<details{opened}><summary>{summary}</summary>{details}</details>" if details else summary
        rows.append(
            f'<tr class="{"fail" if failed else "dec"}"><td>{escape(d["time"][11:23])}</td>'
            f'<td class="mono">{escape(d["request_id"])}</td><td>{escape(model)}</td>'
            f"<td>{outcome}</td><td>{body}</td></tr>"
        )
    return "".join(rows)


def render(info: dict[str, Any], endpoints: dict[str, Any], decisions: dict[str, Any], refresh: int = 5) -> str:
    rows = endpoints["endpoints"]
    fresh = sum(1 for e in rows if not e["metrics_stale"])
    in_flight = sum(e["in_flight"]["requests"] for e in rows)
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh > 0 else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{meta}<title>epp status: {escape(info["pool"])}</title>
<style>{_STYLE}</style></head><body>
<h1>epp — endpoint picker status</h1>
<div class="info"><span><b>pool</b> {escape(info["pool"])}</span><span><b>source</b> {escape(info["source"])}</span>
<span><b>endpoints</b> {len(rows)} ({fresh} with fresh metrics)</span><span><b>in flight</b> {_number(in_flight)}</span>
<span><b>decisions</b> {decisions["recorded"]:,} (last {len(decisions["decisions"])} kept)</span>
<span><b>up</b> {info["uptime_seconds"]:.0f} s</span><span><b>at</b> {escape(endpoints["time"])}</span></div>
<h2>Endpoints</h2>
<table><tr><th>name</th><th>endpoint</th><th>labels</th><th>queue</th><th>running</th><th>KV cache</th>
<th>in flight (this epp)</th><th>metrics age</th><th>scrape errors</th><th>prefix blocks</th></tr>
{_endpoint_rows(rows)}</table>
<p class="small" style="margin:4px 10px">Green: metrics fresh; yellow: older than
{endpoints["metrics_staleness_threshold_seconds"]:g} s; red: never scraped. Queue, running and KV cache are the
scraped values corrected by what this epp routed since the scrape (what the scorers read).</p>
<h2>Recent decisions</h2>
<table><tr><th>time (UTC)</th><th>request id</th><th>model</th><th>sent to</th>
<th>best candidates (total score) — open for every scorer</th></tr>
{_decision_rows(decisions["decisions"])}</table>
<p class="small" style="margin:6px 10px">JSON: <a href="/debug/endpoints">/debug/endpoints</a> ·
<a href="/debug/decisions">/debug/decisions</a> · <a href="/debug/config">/debug/config</a> ·
<a href="/metrics">/metrics</a> · <a href="?refresh=0">stop reloading</a></p>
</body></html>
"""
