"""`tb-gradstats`: export logged gradient statistics and report health alerts.

Reads through the same `reader.Reader` as the TensorBoard plugin, over a
data provider built directly on the logdir (every logged step is kept).

Exit codes: 0 success; 1 `report` found alerts at or above `--fail-on`
(default `error`, so warnings alone do not fail a CI job); 2 bad usage or a
logdir without Gradient Health data.

Example:

```
tb-gradstats export runs/ --run exp1 --format csv > exp1.csv
tb-gradstats report runs/ --fail-on warning
```
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from collections.abc import Sequence

EXIT_OK, EXIT_ALERTS, EXIT_USAGE = 0, 1, 2


def _avoid_tensorflow() -> None:
    """Makes TensorBoard use its TF stub in this process (seconds faster).

    Only for the console command: a library caller may need the real
    `tensorboard.compat.tf` later in the same process.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tb-gradstats", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="every logged value in long form")
    export.add_argument("logdir")
    export.add_argument("--run", action="append", help="run to export (repeatable; default all)")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    report = sub.add_parser("report", help="health alerts and skipped data")
    report.add_argument("logdir")
    report.add_argument("--run", action="append", help="run to check (repeatable; default all)")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--fail-on", choices=("warning", "error", "never"), default="error",
                        help="exit 1 when alerts at or above this severity exist (default error)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: arguments without the program name; `None` means `sys.argv[1:]`
            (the console script, which also keeps TensorFlow out of the process).

    Returns:
        The exit code.

    Example:

    ```python
    from tb_gradstats import cli
    cli.main(["report", "runs/", "--json"])
    ```
    """
    if argv is None:
        _avoid_tensorflow()
        argv = sys.argv[1:]
    args = _parser().parse_args(list(argv))
    try:
        data, skipped = _load(args.logdir, args.run)
    except UsageError as e:
        print(f"tb-gradstats: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "export":
        return _export(data, args.format)
    return _report(data, skipped, args.json, args.fail_on)


class UsageError(Exception):
    """A problem the user can fix (message only, no traceback)."""


def _load(logdir: str, runs: list[str] | None):
    if not os.path.isdir(logdir):
        raise UsageError(f"{logdir!r} is not a directory")
    from tb_gradstats import reader

    try:
        data, skipped = reader.Reader(reader.logdir_provider(logdir)).read_all()
        skipped += reader.EventFileScanner(logdir, grace_s=0).scan()
    except Exception as e:  # noqa: BLE001 - any read failure is reported, not traced
        raise UsageError(f"cannot read {logdir!r}: {type(e).__name__}: {e}") from None
    if runs:
        missing = [r for r in runs if r not in data]
        if missing:
            known = ", ".join(sorted(data)) or "none"
            raise UsageError(
                f"no Gradient Health data for run(s) {missing} (runs with data: {known})")
        data = {r: data[r] for r in runs}
        skipped = [s for s in skipped if s.run in runs]
    if not data:
        detail = f" ({len(skipped)} tag(s) skipped, see `report`)" if skipped else ""
        raise UsageError(f"no Gradient Health data under {logdir!r}{detail}")
    return data, skipped


def _export(data: dict, fmt: str) -> int:
    from tb_gradstats import plugin, reader

    rows = (row for d in data.values() for row in reader.long_rows(d))
    if fmt == "csv":
        sys.stdout.write(plugin.to_csv(rows))
    else:
        keys = plugin.CSV_HEADER
        json.dump([dict(zip(keys, row, strict=True)) for row in rows], sys.stdout,
                  allow_nan=True)  # NaN/Infinity as JavaScript literals, like json.dumps
        sys.stdout.write("\n")
    return EXIT_OK


def _report(data: dict, skipped: list, as_json: bool, fail_on: str) -> int:
    from tb_gradstats import alerts

    found = [a for d in data.values() for a in alerts.evaluate(d)]
    if as_json:
        json.dump({"alerts": [a.as_json() for a in found],
                   "skipped": [s.as_json() for s in skipped]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_report(data, found, skipped)
    failing = [] if fail_on == "never" else alerts.at_least(found, fail_on)
    return EXIT_ALERTS if failing else EXIT_OK


def _print_report(data: dict, found: list, skipped: list) -> None:
    from tb_gradstats import alerts

    for run in data:
        mine = [a for a in found if a.run == run]
        c = alerts.counts(mine)
        print(f"{run}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info")
        for a in mine:
            where = a.layer if a.group == "_step" else f"{a.group} {a.layer}"
            print(f"  {a.severity.upper():7} {a.rule:20} {where} "
                  f"[steps {a.first_step}..{a.last_step}] {a.message}")
    for s in skipped:
        print(f"skipped {s.run} {s.tag}: {s.reason}")


if __name__ == "__main__":
    sys.exit(main())
