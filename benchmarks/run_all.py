"""Runs the three benchmarks, prints their tables and writes them into README.md.

Only the text between the `<!-- results:start -->` and `<!-- results:end -->`
markers of `benchmarks/README.md` is replaced, so the hand-written reading of
the numbers around it survives a rerun.

Usage: `python benchmarks/run_all.py [--quick] [--only overhead scale size] [--no-readme]`
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common  # noqa: E402

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"
BENCHMARKS = ("overhead", "scale", "size")


def run_overhead(quick: bool, reps: int | None) -> str:
    """Runs `overhead.py`; returns its markdown section."""
    from benchmarks import overhead

    argv = (["--quick"] if quick else []) + (["--reps", str(reps)] if reps else [])
    result = overhead.main(argv)
    s = result["settings"]
    return (
        "### a. Overhead\n\n"
        f"{s['reps']} interleaved repetitions; each fit {s['epochs']} epochs × "
        f"{s['steps_per_epoch']} steps, first epoch dropped; median per-step time. "
        f"`gh_default` logs every {overhead.gh_default_update_freq()} steps; `naive` and "
        f"`tb_hist` work once per epoch ({s['steps_per_epoch']} steps), so their ratio "
        "shrinks with longer epochs while their cost per logged point does not.\n\n"
        + result["table"]
    )


def run_scale(quick: bool) -> str:
    """Runs `scale.py`; returns its markdown section."""
    from benchmarks import scale

    if quick:
        return "### b. Scale\n\n" + scale.main(["--quick"])["table"]
    # The full size under both TensorBoard loaders, and a size the default loader can serve.
    scenarios = [[], ["--tb-flag=--load_fast=false"], ["--steps", "2000"]]
    tables = [scale.main(argv)["table"] for argv in scenarios]
    return "### b. Scale\n\n" + "\n\n".join(tables)


def run_size(quick: bool) -> str:
    """Runs `size.py`; returns its markdown section."""
    from benchmarks import size

    result = size.main(["--steps", "5" if quick else "20"])
    return (
        "### c. Event size per logged step\n\n"
        "Steady state (the first event of each tag carries the metadata and is shown "
        "apart). GH = Gradient Health, one float64 stats tensor (27 columns with the four "
        "default what-if formats) for all variables, plus a log2 histogram tensor "
        "(48 bins in this synthetic data) when `histogram_freq` hits; "
        "tf.summary.histogram = one default 30-bucket histogram per variable.\n\n"
        + result["table"]
    )


def machine_section() -> str:
    """Returns the markdown list of machine facts."""
    facts = common.machine_facts(with_tf=True)
    return "\n".join(f"- **{k}**: {v}" for k, v in facts.items())


def save_section(name: str, text: str) -> None:
    """Keeps a benchmark's latest section under `bench-out/sections/`."""
    with open(os.path.join(common.ensure_out("sections"), f"{name}.md"), "w",
              encoding="utf-8") as f:
        f.write(text)


def load_section(name: str) -> str | None:
    """Returns the latest saved section of a benchmark, if any."""
    path = os.path.join(common.BENCH_OUT, "sections", f"{name}.md")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_readme(body: str) -> None:
    """Replaces the results block of README.md (creating the file if needed)."""
    block = f"{START}\n{body}\n{END}"
    if os.path.exists(README):
        with open(README, encoding="utf-8") as f:
            text = f.read()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# tb_gradstats benchmarks\n\n" + block + "\n"
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs for development (printed only; README untouched)")
    parser.add_argument("--reps", type=int, default=None, help="overhead repetitions")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sections = [f"## Results ({'quick' if args.quick else 'full'} run)\n\n" + machine_section()]
    runners = {
        "overhead": lambda: run_overhead(args.quick, args.reps),
        "scale": lambda: run_scale(args.quick),
        "size": lambda: run_size(args.quick),
    }
    for name in BENCHMARKS:
        if name in args.only:
            print(f"\n=== {name} ===", flush=True)
            section = runners[name]() + f"\n\n_Measured {common.machine_facts(False)['date']}._"
            if not args.quick:
                save_section(name, section)
            sections.append(section)
        elif (saved := load_section(name)) is not None:
            sections.append(saved)  # an earlier run's numbers, with their date
    body = "\n\n".join(sections)
    body += f"\n\n_This run took {time.perf_counter() - start:.0f} s._"
    print("\n" + body)
    if not (args.no_readme or args.quick):
        write_readme(body)
        print(f"\nwrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
