"""`python -m consort.bench NAME [options]`: runs one of the package's benchmarks."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m consort.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from consort.bench import cache

    cache.add_arguments(sub.add_parser("cache", help=cache.SUMMARY, description=cache.__doc__))
    args = parser.parse_args(argv)
    if args.bench == "cache":
        return cache.run(args)
    parser.error(f"unknown benchmark {args.bench!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
