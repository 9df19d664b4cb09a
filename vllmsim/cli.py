"""`vllm-sim`: one or many simulated vLLM servers (consecutive ports) in one process."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import replace

import uvloop

from vllmsim.engine import EngineConfig
from vllmsim.server import SimServer


def parse_lora_modules(values: list[str]) -> tuple[str, ...]:
    """vLLM forms: `name=path`, a JSON object with "name", or a bare name."""
    names = []
    for value in values:
        if value.startswith("{"):
            names.append(str(json.loads(value)["name"]))
        else:
            names.append(value.split("=", 1)[0])
    return tuple(names)


def parse_speeds(value: str) -> tuple[float, ...]:
    try:
        speeds = tuple(float(item) for item in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value!r}") from None
    if not all(0 < s < float("inf") for s in speeds):
        raise argparse.ArgumentTypeError(f"speed factors must be positive: {value!r}")
    return speeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-sim", description=__doc__)
    defaults = EngineConfig()
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--count", type=int, default=1, help="servers on consecutive ports from --port")
    parser.add_argument("--time-scale", type=float, default=1.0, help="run this many times faster than real time")
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=defaults.max_num_batched_tokens)
    parser.add_argument("--num-gpu-blocks", "--num-gpu-blocks-override", type=int, default=defaults.num_gpu_blocks)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--max-loras", type=int, default=None)
    parser.add_argument("--lora-modules", nargs="*", default=[])
    parser.add_argument(
        "--speeds",
        type=parse_speeds,
        default=None,
        help="comma-separated speed factor per server (e.g. 1,1,0.5,0.5): each step of server i lasts 1/speed_i "
        "of its modelled time; one value applies to all; default 1. Changeable at run time: POST /sim/speed",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens per streamed chunk after the first (vLLM's --stream-interval); fewer chunks, less CPU",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    adapters = parse_lora_modules(args.lora_modules)
    max_loras = args.max_loras if args.max_loras is not None else (1 if adapters else 0)
    config = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        max_loras=max_loras,
    )
    model = args.served_model_name or args.model
    speeds = args.speeds or (1.0,)
    if len(speeds) == 1:
        speeds = speeds * args.count
    servers = [
        SimServer(
            model, args.port + i, replace(config, speed=speeds[i]), args.time_scale, adapters, args.host,
            args.stream_interval,
        )
        for i in range(args.count)
    ]  # fmt: skip
    for server in servers:
        await server.start()
    print(
        f"vllm-sim: {len(servers)} server(s) for {model} on {args.host}:{args.port}..{args.port + args.count - 1}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 1 or args.time_scale <= 0 or args.stream_interval < 1:
        print("vllm-sim: --count and --stream-interval must be >= 1 and --time-scale > 0", file=sys.stderr)
        return 2
    if args.speeds is not None and len(args.speeds) not in (1, args.count):
        print(f"vllm-sim: --speeds needs 1 or --count ({args.count}) values, got {len(args.speeds)}", file=sys.stderr)
        return 2
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
