"""Cost of the SSE usage scanner per streamed response: a typical vLLM stream (one event per token, the usage
in the last event) and a pathological one (16 MiB without a newline, 64 KiB chunks).

    python benchmarks/hostile/sse_scan.py [--tokens 256] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from epp.requests.usage import SSEUsageScanner


def typical_stream(tokens: int) -> list[bytes]:
    chunks = [
        b"data: "
        + orjson.dumps({"object": "chat.completion.chunk", "choices": [{"delta": {"content": f"t{i}"}}]})
        + b"\n\n"
        for i in range(tokens)
    ]
    usage = {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}
    chunks.append(
        b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n"
    )
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def scan(chunks: list[bytes]) -> float:
    started = time.perf_counter()
    scanner = SSEUsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    chunks = typical_stream(args.tokens)
    times = [scan(chunks) for _ in range(args.repeat)]
    per_chunk = statistics.median(times) / len(chunks) * 1e6
    print(f"typical stream ({len(chunks)} chunks): median {statistics.median(times) * 1e3:.3f} ms per response, "
          f"{per_chunk:.2f} us per chunk")  # fmt: skip
    flood = [b"x" * 65536] * 256
    print(f"16 MiB without a newline in 64 KiB chunks: {scan(flood):.3f} s")


if __name__ == "__main__":
    main()
