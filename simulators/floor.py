"""The demo plant without the agent: meters, machine controller and MES, for the compose file.

    python -m simulators.floor --broker mosquitto:1883 --output /shared \\
        --store-path /var/lib/edge-agent/edge-agent.db

Serves the five meters of the enclosure line on fixed ports (``--base-port``, one per meter) and
the welding robot's OPC UA controller (``--opcua-port``), writes the agent's configuration for
them to ``OUTPUT/plant.yaml`` (and, with ``--hub-output``, a plant hub's configuration with a
demo CA and customer), then ``OUTPUT/ready``, waits for the agent's retained ``online``
status, and runs lots through the line batch after batch, printing every record the agent
publishes and, per batch, the error against the simulator's ground truth. The agent is another
process (container) that shares this one's network namespace: the simulators listen on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from simulators.demo import DEMO_BALANCE_PERIOD_S, PlantHarness, RecordSubscriber, print_truth
from simulators.demo_hub import write_hub_config
from simulators.mes import demo_lots

READY_FILE = "ready"
CONFIG_FILE = "plant.yaml"


def broker_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def wait_online(consumer: RecordSubscriber, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(status.get("state") == "online" for status in consumer.statuses):
            return True
        await asyncio.sleep(0.2)
    return False


async def run_floor(args: argparse.Namespace) -> int:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / READY_FILE).unlink(missing_ok=True)
    host, port = args.broker
    sections = {"health": {"enabled": True, "port": args.health_port}} if args.health_port else {}
    harness = PlantHarness(
        output,
        host,
        port,
        echo=True,
        opcua_steps=("welding-robot",),
        balance={"period_s": DEMO_BALANCE_PERIOD_S, "settle_s": 2.0},
        base_port=args.base_port,
        opcua_port=args.opcua_port,
        store_path=Path(args.store_path),
        run_agent=False,
        sections=sections,
    )
    if args.hub_output:
        path, _ = write_hub_config(
            Path(args.hub_output),
            host,
            port,
            harness.raw_config["footprint"],
            api_host=args.hub_api_host,
            api_port=args.hub_api_port,
            store_url=args.hub_store_url,
        )
        print(f"hub configuration in {path} (demo customer in demo-customer.txt)", flush=True)
    async with harness:
        (output / READY_FILE).write_text("ready\n", encoding="utf-8")
        meters = ", ".join(f"{m}:{harness.plant.port_of(m)}" for m in harness.plant.meters)
        print(f"plant serving meters {meters}; configuration in {harness.config_path}", flush=True)
        assert harness.consumer is not None
        if not await wait_online(harness.consumer, args.agent_timeout):
            print(f"error: no agent came online within {args.agent_timeout:g} s", flush=True)
            return 1
        print("agent online: production starts", flush=True)
        batch = 0
        while args.batches == 0 or batch < args.batches:
            batch += 1
            lots = demo_lots(args.lots, prefix=f"B{batch:03d}")
            truth = await harness.run_plan(lots, args.step_seconds, pause_on="paint-booth")
            await harness.consumer.wait_for(len(truth) * batch, args.lots * batch, timeout_s=30)
            print_truth(truth, harness.consumer.latest("order"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the demo plant for an agent elsewhere")
    parser.add_argument("--broker", type=broker_address, required=True, help="HOST:PORT")
    parser.add_argument("--output", default="floor", help="folder for plant.yaml and truth")
    parser.add_argument(
        "--store-path", default="edge-agent.db", help="the agent's store.path (in plant.yaml)"
    )
    parser.add_argument("--base-port", type=int, default=15020, help="first meter's Modbus port")
    parser.add_argument("--opcua-port", type=int, default=4840)
    parser.add_argument("--health-port", type=int, default=9108, help="0: health endpoint off")
    parser.add_argument("--lots", type=int, default=3, help="lots per batch")
    parser.add_argument("--batches", type=int, default=0, help="0: until stopped")
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--agent-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--hub-output", default="", help="also write a hub configuration here")
    parser.add_argument("--hub-api-host", default="0.0.0.0", help="the hub API's listen address")
    parser.add_argument("--hub-api-port", type=int, default=8443)
    parser.add_argument("--hub-store-url", default="sqlite:///hub.db")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # `docker stop`: a clean shutdown
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await run_floor(args)
        except asyncio.CancelledError:
            return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(guarded())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
