"""``python -m bench <suite> [options]`` — suites: engine, http, scale, long (or all), and profile."""

from __future__ import annotations

import argparse

from .common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suite", choices=["engine", "http", "scale", "long", "profile", "all"])
    parser.add_argument("--instances", type=int, default=None, help="instances per run (suite default if omitted)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["latency", "burst", "steady"], default=None,
                        help="scale: one part only (inbox/complete latency, timer burst, steady timers)")
    args = parser.parse_args()
    suites = ["engine", "http", "scale", "long"] if args.suite == "all" else [args.suite]
    for suite in suites:
        print(f"\n== {suite} ==")
        if suite == "engine":
            from . import engine_suite

            result = engine_suite.main(args.instances or (20 if args.quick else 100))
        elif suite == "http":
            from . import http_suite

            result = http_suite.main(args.instances or (20 if args.quick else 100), quick=args.quick)
        elif suite == "scale":
            from . import scale_suite

            result = scale_suite.main(quick=args.quick, only=args.only)
        elif suite == "profile":
            from . import profile_suite

            result = profile_suite.main(args.instances or (10 if args.quick else 30))
        else:
            from . import long_suite

            result = long_suite.main(quick=args.quick)
        print(f"result written to {write_result(suite, result)}")


if __name__ == "__main__":
    main()
