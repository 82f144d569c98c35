"""A Python load generator for what wrk cannot do: open-loop constant rate, and SES blasting.

    python bench/loadgen.py open  --url URL --rate 100 --seconds 20 --warmup 2 --out FILE
    python bench/loadgen.py blast --url FAKE_SES --connections 32 --seconds 5 --out FILE
    python bench/loadgen.py boto  --url FAKE_SES --connections 32 --seconds 5 --out FILE
    python bench/loadgen.py self  --url FAKE_SES --connections 20 --seconds 3 --out FILE

``open`` sends ``POST /emails/verify-email`` at a fixed rate whatever the answers take (so
slow answers cannot slow the load down and hide latency), each to a new address, and writes
for every request its wall-clock send time, status, answer time and the id answered.
``blast`` is the drain's ceiling: SESv2 SendEmail requests of a real rendered mail's size,
``--connections`` in flight, straight to the fake SES (no database, no botocore).
``boto`` is the same with aioboto3's ``send_email``, configured as tegami configures it: the
most the prescribed SES client can do in one process, whatever tegami does around it.
``self`` measures this generator's own ceiling (closed loop against the fake's ping), to show
it is not what limits the figures.

It runs in its own process, beside the service, on uvloop and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from typing import Any

import aiohttp

_HEADERS = {"Content-Type": "application/json"}


async def open_loop(args: argparse.Namespace) -> dict[str, Any]:
    headers = dict(_HEADERS)
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    total = int(args.rate * (args.seconds + args.warmup))
    warm = int(args.rate * args.warmup)
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(index: int) -> None:
            body = {
                "to": f"{args.prefix}-{index}@example.com",
                "params": {"verification_url": f"https://proworks.jp/verify?token={index}"},
                "user_id": f"user-{index}",
            }
            sent = time.time()
            started = time.perf_counter()
            try:
                async with http.post(args.url, json=body, headers=headers) as response:
                    answer = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, ValueError) as exc:
                answer, status = {"error": repr(exc)}, 0
            results.append(
                {
                    "index": index,
                    "warmup": index < warm,
                    "sent": sent,
                    "lateness": sent - (t0 + index / args.rate),
                    "status": status,
                    "rtt": time.perf_counter() - started,
                    "id": answer.get("id") if isinstance(answer, dict) else None,
                    "to": body["to"],
                }
            )

        loop = asyncio.get_running_loop()
        tasks = []
        t0 = time.time() + 0.2
        mono0 = loop.time() + 0.2
        for index in range(total):
            delay = mono0 + index / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return {"requests": results}


def _ses_body(index: int, raw: bytes) -> bytes:
    return json.dumps(
        {
            "FromEmailAddress": "PRO WORKS <noreply@proworks.jp>",
            "Destination": {"ToAddresses": [f"blast-{index}@example.com"]},
            "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
            "EmailTags": [
                {"Name": "tegami_id", "Value": f"blast-{index}"},
                {"Name": "tegami_type", "Value": "verify-email"},
            ],
            "ConfigurationSetName": "tegami-events",
        }
    ).encode()


async def blast(args: argparse.Namespace) -> dict[str, Any]:
    raw = os.urandom(args.mail_bytes)
    url = f"{args.url}/v2/email/outbound-emails"
    counter = 0
    done = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.perf_counter() + args.seconds

        async def lane() -> None:
            nonlocal counter, done, errors
            while time.perf_counter() < deadline:
                counter += 1
                body = _ses_body(counter, raw)
                async with http.post(url, data=body, headers=_HEADERS) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(args.connections)))
        elapsed = time.perf_counter() - started
    return {"sent": done, "errors": errors, "seconds": elapsed, "per_second": done / elapsed}


async def boto(args: argparse.Namespace) -> dict[str, Any]:
    """aioboto3's SendEmail alone, configured as tegami configures it: no database, no
    rendering. What the SES client that the design prescribes can do in one process."""
    from app import aws

    raw = os.urandom(args.mail_bytes)
    counter = 0
    done = 0
    async with aws.client(
        "sesv2",
        region="ap-northeast-1",
        pool_size=args.connections,
        endpoint_url=args.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (the fake's)
    ) as client:
        deadline = time.perf_counter() + args.seconds

        async def lane() -> None:
            nonlocal counter, done
            while time.perf_counter() < deadline:
                counter += 1
                await client.send_email(
                    FromEmailAddress="PRO WORKS <noreply@proworks.jp>",
                    Destination={"ToAddresses": [f"boto-{counter}@example.com"]},
                    Content={"Raw": {"Data": raw}},
                    EmailTags=[
                        {"Name": "tegami_id", "Value": f"boto-{counter}"},
                        {"Name": "tegami_type", "Value": "verify-email"},
                    ],
                    ConfigurationSetName="tegami-events",
                )
                done += 1

        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(lane() for _ in range(args.connections)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {
        "sent": done,
        "seconds": elapsed,
        "per_second": done / elapsed,
        "cpu_ms_per_call": cpu / max(1, done) * 1000,
    }


async def self_test(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url}/_bench/ping"
    done = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.perf_counter() + args.seconds

        async def lane() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.get(url) as response:
                    await response.read()
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(args.connections)))
        elapsed = time.perf_counter() - started
    return {"requests": done, "seconds": elapsed, "per_second": done / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["open", "blast", "boto", "self"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY"))
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--mail-bytes", type=int, default=4700)
    parser.add_argument("--prefix", default="lat")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    run = {"open": open_loop, "blast": blast, "boto": boto, "self": self_test}[args.mode]
    try:
        import uvloop
    except ImportError:
        uvloop = None
    # `boto` runs on asyncio's own loop, as `tegami worker` does; the rest on uvloop.
    if uvloop is None or args.mode == "boto":
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    with open(args.out, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
