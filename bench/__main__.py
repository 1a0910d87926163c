"""``python -m bench [--quick] [--only NAME ...] [--report-only]``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report
from bench._common import Context, Section, compile_own_packages, environment

BENCHMARKS = {"poll": "bench.poll", "inference": "bench.infer", "pipeline": "bench.pipeline",
              "footprint": "bench.footprint", "rest": "bench.rest", "e2e": "bench.e2e",
              "scaling": "bench.scaling", "soak": "bench.soak", "opcua": "bench.opcua"}
# Left out of --quick (which must finish in < 2 min) unless named with --only: the soak is
# about time itself (--quick --only soak runs it for 60 s).
NOT_QUICK = ("soak",)


def run_one(name: str, ctx: Context) -> Section:
    module = importlib.import_module(BENCHMARKS[name])
    started = time.perf_counter()
    try:
        section: Section = module.run(ctx)
    except Exception as exc:  # one broken benchmark must not lose the others' results
        traceback.print_exc()
        section = Section(name, module.TITLE, module.__doc__ or "", skipped=f"failed: {exc!r}")
    section.seconds = round(time.perf_counter() - started, 1)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="short runs (< 2 min in all; no soak unless --only soak)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)}); others keep their last results")
    parser.add_argument("--soak-seconds", type=float, metavar="S",
                        help="soak for S seconds instead of 180 (60 with --quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="regenerate BENCHMARKS.md from results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        print(report.write_markdown(json.loads(report.RESULTS.read_text())))
        return 0
    names = args.only or [n for n in BENCHMARKS if not (args.quick and n in NOT_QUICK)]
    compile_own_packages()  # measure what a deployed bridge runs (see there)
    sections = []
    with tempfile.TemporaryDirectory(prefix="plcbridge-bench-") as workdir:
        ctx = Context(quick=args.quick, workdir=Path(workdir), soak_seconds=args.soak_seconds)
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            section = run_one(name, ctx)
            sections.append(section)
            status = f"skipped: {section.skipped}" if section.skipped else f"{len(section.results)} results"
            print(f"[bench] {name}: {status} ({section.seconds:g} s)", flush=True)
            for result in section.results:
                ratio = "" if result.ratio is None else f"  ratio {result.ratio:.2f}"
                print(f"    {result.name}: {result.value} {result.unit} (baseline {result.baseline}){ratio}")
    data = report.write_results(environment(args.quick), [s.to_json() for s in sections],
                                merge=args.only is not None)
    print(f"[bench] wrote {report.RESULTS} and {report.write_markdown(data)}")
    return 1 if any(s.skipped.startswith("failed") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
