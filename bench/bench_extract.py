"""Benchmark the Zenodo path: (a) memory of indexing and extracting a multi-GB zip, (b) fetch throughput.

    .venv/bin/python bench/bench_extract.py [--gib 2.25] [--extract 2000] [--files 200] [--fault-rate 0.1]

(a) Two zips are built in a temp dir, ``--gib`` and twice that (the 2x one passes 4 GiB, so member
    offsets need ZIP64), like the DECaLS image parts: ZIP_STORED members ``J###/<iauname>.png`` of
    250-350 kB of incompressible bytes, plus one blob of a quarter of the zip.  Each is measured in a
    fresh child process (so neither the builder nor the other zip pollutes it): ``archives.index``,
    then ``archives.extract`` of ``--extract`` members spread over the whole zip through one
    ``ZipReader``, then the blob (one member of 0.5-1 GiB: a read() of it would show).  A thread
    there samples the RSS (psutil) every 5 ms and keeps the peak; the baseline is taken after the
    imports (pandas comes with ``gzmorph.io``).  ``getrusage`` maxrss is NOT used: Linux carries it
    across fork+exec.  Every extracted file is compared with what was written.  The zips are
    deleted after each measurement.
(b) ``--files`` files of ~300 kB served by the loopback ``ZenodoImitation``: listed, then downloaded
    with ``zenodo.download_file`` by 1 and by 4 threads sharing one session, without faults and with
    ``--fault-rate`` of the files drawing one fault of a random kind (503, 429 with Retry-After: 1,
    stall before the headers and in the body past the 1 s time-out, truncated, corrupted body).
    Every landed file's md5 is then checked against the source: corrupt files landed must be 0.
    A re-run must fetch nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Zenodo imitation shared with the tests

POOL_BYTES = 64 << 20
MiB = 1 << 20


def pool() -> bytes:
    import numpy as np

    return np.random.default_rng(0).bytes(POOL_BYTES)


def iauname(i: int) -> str:
    return f"J{(i * 37) % 360:03d}{i:06d}.00+{(i * 7919) % 1000000:06d}.0"


def member_bytes(data: bytes, i: int) -> bytes:
    """Member i: its number, then 250-350 kB of the random pool (deterministic, so a child can check it)."""
    size = 250_000 + (i * 7919) % 100_000
    off = (i * 104_729) % (POOL_BYTES - size)
    return i.to_bytes(8, "little") + data[off:off + size - 8]


def build_zip(path: Path, total: int, data: bytes) -> tuple[int, int, str]:
    """A ZIP_STORED zip of about ``total`` bytes; its member count, blob size and blob md5."""
    from gzmorph.sources.zenodo import png_member

    blob = total // 4
    digest = hashlib.md5()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        written, i = 0, 0
        while written < total - blob:
            body = member_bytes(data, i)
            zf.writestr(png_member(iauname(i)), body)
            written += len(body)
            i += 1
            if i == (total - blob) // 300_000 // 2:  # the blob sits mid-zip
                with zf.open(zipfile.ZipInfo("blob/blob.bin"), "w", force_zip64=True) as dst:
                    left = blob
                    while left:
                        chunk = data[: min(left, POOL_BYTES)]
                        dst.write(chunk)
                        digest.update(chunk)
                        left -= len(chunk)
    return i, blob, digest.hexdigest()


# -- (a) child: index and extract under an RSS sampler ----------------------------------------------
def child(zip_path: Path, out: Path, n_extract: int, blob_size: int) -> None:
    import psutil

    from gzmorph import archives

    proc = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    baseline = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with archives.ZipReader() as reader:
        idx = archives.index([zip_path], reader=reader)
        index_s = time.perf_counter() - t0
        after_index = proc.memory_info().rss
        names = sorted(n for n in idx.members if n.endswith(".png"))
        step = max(1, len(names) // n_extract)
        chosen = names[::step][:n_extract]
        t0 = time.perf_counter()
        extracted = 0
        for k, name in enumerate(chosen):
            target = out / f"{k}.png"
            archives.extract(*idx.members[name], target, max_bytes=4 * MiB, reader=reader)
            extracted += target.stat().st_size
        extract_s = time.perf_counter() - t0
        peak_members = peak[0]
        before_blob = proc.memory_info().rss
        t0 = time.perf_counter()
        archives.extract(*idx.members["blob/blob.bin"], out / "blob.bin", max_bytes=blob_size, reader=reader)
        blob_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    print(json.dumps({"members": len(idx.members), "baseline": baseline, "after_index": after_index,
                      "peak_members": peak_members, "before_blob": before_blob, "peak": peak[0],
                      "index_s": index_s, "extract_s": extract_s,
                      "extracted_bytes": extracted, "chosen": chosen, "blob_s": blob_s}))


def measure(workdir: Path, total: int, n_extract: int, data: bytes) -> dict:
    zip_path = workdir / "gz_decals_dr5_png_part1.zip"
    out = workdir / "out"
    out.mkdir()
    t0 = time.perf_counter()
    members, blob, blob_md5 = build_zip(zip_path, total, data)
    build_s = time.perf_counter() - t0
    size = zip_path.stat().st_size
    proc = subprocess.run([sys.executable, __file__, "--child", str(zip_path), str(out), str(n_extract), str(blob)],
                          capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = sum((out / f"{k}.png").read_bytes() != member_bytes(data, int(name.split("/")[1][4:10]))
              for k, name in enumerate(r["chosen"]))
    from gzmorph.net import file_md5

    bad += file_md5(out / "blob.bin") != blob_md5
    shutil.rmtree(out)
    zip_path.unlink()
    r.update(size=size, zip_members=members + 1, blob=blob, build_s=build_s, bad=bad)
    return r


def part_a(args: argparse.Namespace, workdir: Path) -> None:
    total = int(args.gib * (1 << 30))
    free = shutil.disk_usage(workdir).free
    need = int(2 * total * 1.6) + (2 << 30)  # the 2x zip, its extracted blob and members, and a margin
    if free < need:
        scaled = max(0.05, args.gib * (free - (2 << 30)) / need)
        print(f"NOTE: {free / 2**30:.1f} GiB free in {workdir}, {need / 2**30:.1f} GiB needed: "
              f"zip size scaled from {args.gib} to {scaled:.2f} GiB")
        total = int(scaled * (1 << 30))
    data = pool()
    print("(a) index + extract, RSS sampled every 5 ms in a fresh child process")
    rows = []
    for scale in (1, 2):
        r = measure(workdir, scale * total, args.extract, data)
        rows.append(r)
        mib = 2**20
        print(f"  {scale}x zip: {r['size'] / 2**30:.2f} GiB, {r['zip_members']} members (built in {r['build_s']:.0f} s)"
              f"{', ZIP64 offsets' if r['size'] > 0xFFFFFFFF else ''}")
        print(f"     index: {r['index_s'] * 1000:.0f} ms; RSS after imports {r['baseline'] / mib:.0f} MiB, "
              f"+{(r['after_index'] - r['baseline']) / mib:.1f} MiB for the index "
              f"({(r['after_index'] - r['baseline']) / r['members']:.0f} B/member)")
        print(f"     extract {len(r['chosen'])} members ({r['extracted_bytes'] / mib:.0f} MiB): "
              f"{r['extracted_bytes'] / mib / r['extract_s']:.0f} MiB/s, "
              f"{len(r['chosen']) / r['extract_s']:.0f} files/s; "
              f"peak RSS {r['peak_members'] / mib:.0f} MiB (+{(r['peak_members'] - r['baseline']) / mib:.1f})")
        print(f"     extract one {r['blob'] / mib:.0f} MiB member: {r['blob'] / mib / r['blob_s']:.0f} MiB/s; "
              f"peak RSS overall {r['peak'] / mib:.0f} MiB (+{(r['peak'] - r['baseline']) / mib:.1f}; "
              f"+{(r['peak'] - r['before_blob']) / mib:.1f} over the RSS before this member)")
        print(f"     extracted files differing from the source: {r['bad']}")
    one, two = rows
    print(f"  peak RSS 2x / 1x zip: {two['peak'] / one['peak']:.3f} "
          f"(above baseline: {(two['peak'] - two['baseline']) / 2**20:.1f} vs "
          f"{(one['peak'] - one['baseline']) / 2**20:.1f} MiB) for {two['size'] / one['size']:.2f}x the bytes; "
          f"the growth is the open central directory (~1 kB per member), not the bytes")


# -- (b) fetch throughput ----------------------------------------------------------------------------
FAULTS = ("503", "429", "stall", "stall_body", "truncate", "corrupt")


def inject(svc, key: str, kind: str) -> None:
    match = f"/files/{key}/content"
    if kind == "503":
        svc.inject("status", match=match, code=503)
    elif kind == "429":
        svc.inject("status", match=match, code=429, retry_after=1)
    elif kind in ("stall", "stall_body"):
        svc.inject(kind, match=match, seconds=2.0)
    else:
        svc.inject(kind, match=match)


def fetch_run(files: dict[str, bytes], threads: int, fault_rate: float, workdir: Path, seed: int) -> dict:
    from imitations.zenodo import ZenodoImitation

    from gzmorph import net
    from gzmorph.sources import zenodo

    settings = net.HttpSettings(timeout_s=1.0, retries=5, backoff_s=0.05, backoff_max_s=1.0)
    target = workdir / f"fetch-{threads}-{fault_rate}"
    rng = random.Random(seed)
    with ZenodoImitation(4573248, files) as svc, net.make_session(settings, pool_size=threads) as session:
        listed = zenodo.list_files(session, base_url=svc.url, record_id=4573248, settings=settings)
        kinds = {}
        for f in listed:
            if rng.random() < fault_rate:
                kinds[f.key] = rng.choice(FAULTS)
                inject(svc, f.key, kinds[f.key])

        def one(f):
            try:
                return zenodo.download_file(session, f, target, settings=settings, progress=False)
            except net.FetchError as exc:
                return f"failed: {exc}"

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool_:
            outcomes = list(pool_.map(one, listed))
        elapsed = time.perf_counter() - t0
        rerun_start = time.time()
        rerun = [one(f) for f in listed]
        deadline = time.monotonic() + 5  # a stalled handler logs its request only when it wakes
        while len(svc.faults_served()) < len(kinds) and time.monotonic() < deadline:
            time.sleep(0.05)
        served = len(svc.faults_served())
        refetched = sum(s.request.time >= rerun_start for s in svc.requests_to("/content$"))
    corrupt = sum(hashlib.md5((target / k).read_bytes()).hexdigest() != hashlib.md5(v).hexdigest()
                  for k, v in files.items() if (target / k).exists())
    missing = sum(not (target / k).exists() for k in files)
    parts = len(list(target.glob("*.part")))
    shutil.rmtree(target)
    return {"elapsed": elapsed, "injected": len(kinds), "served": served, "corrupt": corrupt, "missing": missing,
            "parts": parts, "failed": sum(o.startswith("failed") for o in outcomes),
            "rerun_skipped": sum(o == "skipped" for o in rerun), "refetched": refetched,
            "kinds": sorted(kinds.values())}


def part_b(args: argparse.Namespace, workdir: Path) -> None:
    files = {f"file_{i:04d}.png": os.urandom(250_000 + (i * 7919) % 100_000) for i in range(args.files)}
    total = sum(map(len, files.values()))
    print(f"(b) fetch {args.files} files, {total / 2**20:.0f} MiB, from the loopback ZenodoImitation "
          f"(time-out 1 s, back-off 0.05 s)")
    for threads in (1, 4):
        for rate in (0.0, args.fault_rate):
            r = fetch_run(files, threads, rate, workdir, seed=threads)
            label = f"{threads} thread{'s' if threads > 1 else ''}, {'faults' if rate else 'clean'}"
            print(f"  {label:<18} {args.files / r['elapsed']:7.1f} files/s {total / 2**20 / r['elapsed']:7.1f} MiB/s "
                  f"({r['elapsed']:.2f} s); faults injected {r['injected']}, served {r['served']}; "
                  f"failed {r['failed']}, missing {r['missing']}, corrupt landed {r['corrupt']}, "
                  f".part left {r['parts']}; re-run skipped {r['rerun_skipped']}/{args.files}, "
                  f"content requests {r['refetched']}")
            if r["kinds"]:
                counts = {k: r["kinds"].count(k) for k in FAULTS if k in r["kinds"]}
                print(f"  {'':<18} fault kinds: {counts}")


def main() -> None:
    logging.getLogger("gzmorph").setLevel(logging.ERROR)  # md5 retries are expected here; the counts report them
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        zip_path, out, n, blob = sys.argv[2:6]
        child(Path(zip_path), Path(out), int(n), int(blob))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.25, help="size of the 1x zip (GiB); the 2x one is double")
    parser.add_argument("--extract", type=int, default=2000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, default=None, help="temp dir parent (default: the system's)")
    parser.add_argument("--skip-extract", action="store_true")
    parser.add_argument("--skip-fetch", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_extract_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if not args.skip_extract:
            part_a(args, workdir)
        if not args.skip_fetch:
            part_b(args, workdir)


if __name__ == "__main__":
    main()
