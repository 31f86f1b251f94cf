"""Regenerates the demo slice (selfevolve/data/demo/) from ../shared/data/routerbench-0shot, deterministically."""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
from collections import Counter, defaultdict
from pathlib import Path

from selfevolve.config import Settings
from selfevolve.data.routerbench import raise_field_limit
from selfevolve.errors import ConfigError

DEMO_DIR = Path(__file__).resolve().parent / "demo"
ROWS_PER_FILE = 100
SEED = 20240401
STRATUM = "oracle_model_to_route_to"


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    raise_field_limit()
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def stratified(rows: list[list[str]], key: int, n: int, rng: random.Random) -> list[int]:
    """Indices of n rows keeping each stratum's share (largest remainders), in the file's original order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row[key]].append(i)
    if n >= len(rows):
        return list(range(len(rows)))
    exact = {g: n * len(ix) / len(rows) for g, ix in groups.items()}
    quota = {g: int(q) for g, q in exact.items()}
    # Hand the rounding leftovers to the largest remainders; ties broken by name so the result is stable.
    for g in sorted(exact, key=lambda g: (-(exact[g] - quota[g]), g))[: n - sum(quota.values())]:
        quota[g] += 1
    picked: list[int] = []
    for g in sorted(groups):
        picked += rng.sample(groups[g], quota[g])
    return sorted(picked)


def make_demo(source: Path, out: Path = DEMO_DIR, n: int = ROWS_PER_FILE, seed: int = SEED) -> list[Path]:
    """Write <task>_<split>.csv.gz with n stratified rows of each source file, all columns kept."""
    files = sorted(source.glob("*_*.csv"))
    if not files:
        raise ConfigError(f"no RouterBench CSVs in {source}")
    tables = {f: _read(f) for f in files}
    # A few sample_ids repeat across rows in RouterBench; leave those out so demo ids are unique as shipped.
    ids = Counter(r[h.index("sample_id")] for h, rows in tables.values() for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f, (header, rows) in tables.items():
        sid = header.index("sample_id")
        rows = [r for r in rows if ids[r[sid]] == 1]
        rng = random.Random(f"{seed}:{f.name}")  # per-file seed: regenerating one file never shifts another
        keep = stratified(rows, header.index(STRATUM), n, rng)
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows[i] for i in keep)
        target = out / (f.name + ".gz")
        # mtime=0 and no file name in the gzip header: the same input gives byte-identical output.
        with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(buf.getvalue().encode("utf-8"))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, help="default: <settings.data_dir>/routerbench-0shot")
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("-n", type=int, default=ROWS_PER_FILE, help="rows per <task>_<split> file")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    source = args.source or Settings().data_dir / "routerbench-0shot"
    for path in make_demo(source, args.out, args.n, args.seed):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
