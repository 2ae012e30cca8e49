"""Every plugin route of API.md, fuzzed with >= 1000 seeded parameter sets each.

The plugin runs inside TensorBoard's own WSGI app (`TensorBoardWSGI`) over a
real synthetic logdir. Whatever the parameters, the answer is 2xx or 4xx
(never 5xx) and every 4xx says why in its body. The static route never serves
a file outside `frontend/`, however the path is encoded.
"""

from __future__ import annotations

import collections
import os
import random
import time

import pytest

from tb_gradstats import plugin
from tests.fixtures import plugin_client, write_synthetic_run

PREFIX = "/data/plugin/gradient_health"
PER_ROUTE = 1000
SEED = 20240611
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = {"float32": ("dense/kernel", "dense/bias"), "float32@float16": ("out/kernel",)}

# Route -> the parameters API.md lists for it (others are added at random too).
ROUTES = {
    "/runs": (),
    "/formats": (),
    "/series": ("run", "metric", "layer", "group", "max_points"),
    "/step_series": ("run", "metric", "max_points"),
    "/heatmap": ("run", "group", "metric", "max_steps", "max_rows"),
    "/histogram": ("run", "layer", "group", "step"),
    "/compare": ("run_a", "run_b", "metric", "step"),
    "/alerts": ("run", "severity"),
    "/overview": (),
    "/export.csv": ("view", "run", "metric", "layer", "group", "max_points", "max_steps",
                    "max_rows", "run_a", "run_b", "step"),
}
ALL_PARAMS = sorted({p for ps in ROUTES.values() for p in ps})

VALID = {
    "run": ["a", "b"],
    "run_a": ["a", "b"],
    "run_b": ["a", "b"],
    "metric": ["l2_norm", "max", "count", "zero_fraction", "underflow_fraction/float16",
               "loss_scale", "skipped_step", "underflow_fraction/float8_e5m2"],
    "layer": ["dense/kernel", "dense/bias", "out/kernel", "*"],
    "group": ["float32", "float32@float16"],
    "max_points": ["2", "5", "1000", "20000"],
    "max_steps": ["1", "3", "400"],
    "max_rows": ["2", "3", "200"],
    "step": ["0", "7", "58", "116"],
    "severity": ["info", "warning", "error"],
    "view": ["series", "heatmap", "compare", "all"],
}

GARBAGE = [
    "", " ", "*", "**", "-1", "-0", "0", "1", "2", "-99999999999999999999", "1e9", "1e309",
    "9" * 400, "99999999999999999999999999999999", str(2**63), str(-(2**63) - 1), "0x10",
    "1.5", "NaN", "nan", "inf", "-inf", "Infinity", "-Infinity", "+5", " 7", "7 ", "１２",
    "٣", "true", "null", "[]", "{}", "../", "../../setup.py", "..%2F..%2Fsetup.py", "%2F",
    "%2e%2e%2f", "a%2Fb", "/", "//", "\\", "..\\..\\", "%00", "\x00", "a\x00b", "\n", "\r\n",
    "é", "ü/ß", "日本語", "😀", "\ufeff", "\u202e", "\udcff".encode("utf-8", "surrogatepass")
    .decode("utf-8", "replace"), "<script>alert(1)</script>", "' OR 1=1 --", "%s%s%n",
    "{0}", "a" * 5000, "x" * 70000, "dense/kernel/../bias", "dense%2Fkernel", "float32@",
    "@float16", "float64", "_step", "gradient_health/step", "future", "garbage",
]


def _value(rng: random.Random, name: str) -> str:
    r = rng.random()
    if r < 0.6:
        return rng.choice(VALID.get(name, ["a"]))
    if r < 0.67:  # a valid value of some other parameter
        return rng.choice(rng.choice(list(VALID.values())))
    if r < 0.77:  # random numbers, negatives and huge ones
        return str(rng.choice([-1, 1]) * rng.randrange(0, 10 ** rng.randrange(1, 40)))
    if r < 0.82:  # random unicode
        return "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(1, 20))
                       ).encode("utf-8", "replace").decode("utf-8", "replace")
    return rng.choice(GARBAGE)


def _params(rng: random.Random, route: str) -> list[tuple[str, str]]:
    """A random multi-dict: the route's own parameters, maybe missing, maybe repeated."""
    out = []
    for name in ROUTES[route]:
        if rng.random() < 0.08:
            continue  # missing
        for _ in range(1 if rng.random() < 0.8 else rng.randrange(2, 5)):  # repeated
            out.append((name, _value(rng, name)))
    for _ in range(rng.randrange(0, 3)):  # parameters the route does not take
        out.append((rng.choice(ALL_PARAMS + ["zzz", "", "run[]"]), _value(rng, "run")))
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("fuzz")
    write_synthetic_run(logdir, "a", steps=range(0, 120, 2), groups=GROUPS,
                        policy="mixed_float16")
    write_synthetic_run(logdir, "b", steps=range(0, 120, 4),
                        groups={"float32": ("dense/kernel", "other/kernel")})
    write_synthetic_run(logdir, "empty_steps", steps=[], groups={"float32": ("x",)})
    return plugin_client(logdir)[0]


def _check(resp, what) -> int:
    status = resp.status_code
    body = resp.get_data()
    assert status < 500, (what, status, body[:500])
    assert 200 <= status < 500 and not 300 <= status < 400, (what, status)
    if status >= 400:
        assert body.strip(), (what, status, "empty 4xx body")
    return status


def test_sanity_valid_requests_are_200(client):
    # Guards the fuzz test against a logdir or client that answers 404 to everything.
    for route, params in [
        ("/runs", {}), ("/series", {"run": "a", "metric": "l2_norm", "layer": "dense/kernel"}),
        ("/heatmap", {"run": "a", "group": "float32", "metric": "max"}),
        ("/histogram", {"run": "a", "layer": "out/kernel"}),
        ("/compare", {"run_a": "a", "run_b": "b", "metric": "l2_norm"}),
        ("/export.csv", {"view": "all"}), ("/index.js", {}), ("/views/series.js", {}),
    ]:
        resp = client.get(PREFIX + route, query_string=params)
        assert resp.status_code == 200, (route, resp.get_data()[:300])


@pytest.mark.parametrize("route", list(ROUTES))
def test_fuzz_route(client, route):
    rng = random.Random(f"{SEED}-{route}")
    statuses = collections.Counter()
    start = time.monotonic()
    for i in range(PER_ROUTE):
        params = _params(rng, route)
        resp = client.get(PREFIX + route, query_string=params)
        statuses[_check(resp, (route, i, params))] += 1
    print(f"{route}: {PER_ROUTE} parameter sets in {time.monotonic() - start:.1f}s, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) == PER_ROUTE
    if ROUTES[route]:
        # The generator reaches both the success and the validation paths.
        assert statuses[200] > 0 and statuses[400] > 0, statuses


# --- static files ------------------------------------------------------------------

TRAVERSALS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "..%c0%af", "....",
              "..;", "%c0%ae%c0%ae", "\u2025", "．．"]
SEPARATORS = ["/", "%2f", "%2F", "%252f", "\\", "%5c", "%5C", "//", "/./", "%00/", ";/"]
TARGETS = ["setup.py", "README.md", "tb_gradstats/plugin.py", "etc/passwd", "Makefile",
           "frontend/index.js", ".git/config", "tests/fixtures.py"]
STATIC_BASES = ["/index.js", "/api.js", "/charts.js", "/style.css", "/views/", "/views/series.js",
                "/", "/views", "/views//", "/views/./"]


def _static_path(rng: random.Random) -> str:
    if rng.random() < 0.2:
        base = rng.choice(STATIC_BASES)
        junk = rng.choice(["", "x", ".js", "%00.js", "?x=..%2F", "#", "/../setup.py",
                           rng.choice(GARBAGE)[:50], "views/SERIES.JS", "index.js.map"])
        return base + junk
    depth = rng.randrange(1, 6)
    sep = rng.choice(SEPARATORS)
    up = sep.join(rng.choice(TRAVERSALS) for _ in range(depth))
    target = rng.choice(TARGETS)
    if rng.random() < 0.5:
        target = target.replace("/", rng.choice(SEPARATORS))
    if rng.random() < 0.5:
        target += rng.choice([".js", "%00.js", "#.js", "?.js", ""])
    return rng.choice(["/views/", "/", "/views/a/", "/index.js/"]) + up + sep + target


def _outside_contents() -> dict[str, bytes]:
    # Distinctive prefixes of files outside frontend/ that must never be served.
    out = {}
    for name in ("setup.py", "README.md", "Makefile", "tb_gradstats/plugin.py",
                 "tests/fixtures.py"):
        path = os.path.join(REPO, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                out[name] = f.read()[:200]
    return out


def test_fuzz_static_cannot_escape_frontend(client):
    frontend = plugin.frontend_dir()
    assert frontend is not None
    served = set()
    for root, _, files in os.walk(frontend):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                served.add(f.read())
    outside = _outside_contents()
    assert "setup.py" in outside
    rng = random.Random(f"{SEED}-static")
    statuses = collections.Counter()
    for i in range(PER_ROUTE):
        path = _static_path(rng)
        query = _params(rng, "/runs") if "?" not in path else None  # '?' starts a query
        resp = client.get(PREFIX + path, query_string=query or None)
        status = _check(resp, ("static", i, path))
        statuses[status] += 1
        body = resp.get_data()
        for name, head in outside.items():
            assert head not in body, (path, f"served contents of {name}")
        if status == 200 and resp.headers.get("Content-Type", "").startswith(
                ("text/javascript", "text/css")):
            assert body in served, path  # byte-identical to a file of frontend/
    print(f"static: {PER_ROUTE} paths, statuses {dict(sorted(statuses.items()))}")
    assert statuses[404] > 0 and statuses[200] > 0, statuses
