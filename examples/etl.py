"""A small ETL pipeline on taskmap: sales files + an HTTP API -> SQLite.

A retailer with shops in several countries exports one CSV of order lines per
country (``sales_<cc>.csv``), in local currency; the pipeline finds them when
it runs and fans out over them with ``expand``.  Exchange rates and store metadata come from an
HTTP API (here a local server this script starts, with a simulated network
latency).  The pipeline

  extract    (io-bound coroutines)  list the sales files, read each of them
                                    and the product catalogue, fetch rates
                                    and stores over HTTP
  transform  (cpu-bound functions)  per country: parse and validate the lines,
                                    join with stores/products/rates and convert
                                    to EUR, bootstrap a confidence interval of
                                    each store's mean order value; then combine
                                    the countries and compute daily revenue with
                                    a 7-day rolling mean, percentiles per
                                    category and a product ranking
  load       (io-bound)             write one table per output into SQLite, in
                                    one transaction
  report     (io-bound)             read a summary back from the database

    python examples/etl.py                         # 2 worker processes
    python examples/etl.py --runner async          # one event loop, this process
    python examples/etl.py --db out.sqlite --ncores 4
    python examples/etl.py --trace etl.json          # + the run's timeline, for Perfetto

It ends with taskmap's summary table of the run (``taskmap.summarize``).

The graph; [i] marks a task expanded at run time, one element per sales file
that list_sales_files finds, each chained to the element of the same file
before it (clean_sales[2] starts as soon as read_sales[2] is done)::

    list_sales_files --> read_sales[i] --> clean_sales[i] --+
    fetch_rates ---------------------------------------------+--> enrich_sales[i] --> store_stats[i] -+
    fetch_stores --------------------------------------------+          |                            |
    read_products --> parse_products ------------------------+          v                            v
                                                         combine_sales --> daily_revenue --> load_sqlite --> report
                                                                       --> category_stats -->
                                                                       --> product_ranking ->

(combine_sales and load_sqlite take the lists of enrich_sales and store_stats;
load_sqlite also takes combine_sales itself; product_ranking also parse_products.)

Task functions are module-level so that worker processes can receive them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import functools
import io
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    import taskmap
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskmap

DATA_DIR = Path(__file__).resolve().parent / "data"
COUNTRIES = ("uk", "us", "se", "de")
YEAR = 2024
ROLLING_DAYS = 7
BOOTSTRAP_SAMPLES = 1000
HTTP_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# The reference-data API: a local HTTP server serving examples/data/*.json
# --------------------------------------------------------------------------


class _ReferenceHandler(BaseHTTPRequestHandler):
    """GET /<name>.json returns that file of the data directory."""

    def do_GET(self) -> None:
        time.sleep(self.server.latency)  # a remote API is never instant
        name = self.path.lstrip("/")
        path = self.server.data_dir / name
        if "/" in name or not name.endswith(".json") or not path.is_file():
            self.send_error(404, f"no such resource: /{name}")
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


@contextlib.contextmanager
def reference_server(data_dir: str | Path = DATA_DIR, latency: float = 0.0):
    """Serve ``data_dir/*.json`` on 127.0.0.1 (a free port) from a daemon
    thread; yields the base URL, e.g. ``http://127.0.0.1:43817``.  Each request
    waits ``latency`` seconds first, like a remote API would."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ReferenceHandler)
    server.daemon_threads = True
    server.data_dir = Path(data_dir)
    server.latency = latency
    thread = threading.Thread(target=server.serve_forever, name="reference-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------
# Extract: io-bound coroutines
# --------------------------------------------------------------------------


async def read_text(path: str) -> str:
    """Read a whole file without blocking the event loop."""
    return await asyncio.to_thread(Path(path).read_text, encoding="utf-8")


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        return json.load(response)


async def fetch_json(url: str):
    """GET a JSON document; the blocking urllib call runs in a thread so other
    fetches and reads overlap with it."""
    return await asyncio.to_thread(_get_json, url)


# --------------------------------------------------------------------------
# Transform: cpu-bound functions
# --------------------------------------------------------------------------


def parse_products(text: str) -> dict[str, dict]:
    """The catalogue as sku -> {name, category, list_price_eur}."""
    return {
        row["sku"]: {"name": row["name"], "category": row["category"], "list_price_eur": float(row["list_price_eur"])}
        for row in csv.DictReader(io.StringIO(text))
    }


def _validate(fields: list[str], seen: set[int]) -> tuple[dict | None, str | None]:
    """One CSV line -> (record, None) or (None, reason)."""
    if len(fields) != 6:
        return None, "malformed row"
    order_id, date, store_id, sku, qty, price = (f.strip() for f in fields)
    try:
        order_id = int(order_id)
    except ValueError:
        return None, "bad order_id"
    if order_id in seen:
        return None, "duplicate order_id"
    seen.add(order_id)
    try:
        date = dt.datetime.strptime(date, "%Y-%m-%d").date()
    except ValueError:
        return None, "bad date"
    if date.year != YEAR:
        return None, "bad date"
    try:
        qty = int(qty)
    except ValueError:
        return None, "bad quantity"
    if qty <= 0:
        return None, "bad quantity"
    try:
        price = float(price)
    except ValueError:
        return None, "bad unit_price"
    if not 0 < price < float("inf"):  # also rejects nan
        return None, "bad unit_price"
    return {
        "order_id": order_id,
        "date": date.isoformat(),
        "store_id": store_id,
        "sku": sku,
        "qty": qty,
        "unit_price": price,
    }, None


def list_sales_files(data_dir: str) -> list[str]:
    """The sales exports there are, found when the pipeline runs (one per
    country, ``sales_<cc>.csv``), in a stable order."""
    return sorted(str(path) for path in Path(data_dir).glob("sales_*.csv"))


async def read_sales(path: str) -> dict:
    """One sales export: its country (from the file name) and its text."""
    country = Path(path).stem.removeprefix("sales_")
    return {"country": country, "text": await read_text(path)}


def clean_sales(export: dict) -> dict:
    """Parse and validate one country's export.  Bad lines are kept, with the
    reason, for the ``rejects`` table rather than silently dropped."""
    country, text = export["country"], export["text"]
    file = f"sales_{country}.csv"
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if [h.strip() for h in header] != ["order_id", "date", "store_id", "sku", "qty", "unit_price"]:
        raise ValueError(f"{file}: unexpected header {header}")
    rows, rejects, seen = [], [], set()
    for fields in reader:
        record, reason = _validate(fields, seen)
        if record is None:
            rejects.append({"file": file, "line": reader.line_num, "reason": reason, "raw": ",".join(fields)})
        else:
            record["line"] = reader.line_num
            rows.append(record)
    return {"country": country, "file": file, "rows": rows, "rejects": rejects}


def enrich_sales(cleaned: dict, rates: dict, stores: dict, products: dict) -> dict:
    """Join the order lines with stores and products and convert to EUR.
    Lines naming an unknown store or product are rejected."""
    store_by_id = {s["store_id"]: s for s in stores["stores"]}
    monthly = rates["monthly"]
    rows, rejects = [], list(cleaned["rejects"])
    for r in cleaned["rows"]:
        store = store_by_id.get(r["store_id"])
        product = products.get(r["sku"])
        if store is None or product is None:
            rejects.append(
                {
                    "file": cleaned["file"],
                    "line": r["line"],
                    "reason": "unknown store" if store is None else "unknown sku",
                    "raw": f"{r['order_id']},{r['date']},{r['store_id']},{r['sku']},{r['qty']},{r['unit_price']}",
                }
            )
            continue
        rate = monthly[r["date"][:7]][store["currency"]]  # currency units per EUR
        rows.append(
            {
                "order_id": r["order_id"],
                "country": cleaned["country"],
                "date": r["date"],
                "store_id": r["store_id"],
                "city": store["city"],
                "sku": r["sku"],
                "category": product["category"],
                "qty": r["qty"],
                "unit_price": r["unit_price"],
                "currency": store["currency"],
                "revenue_eur": r["qty"] * r["unit_price"] / rate,
            }
        )
    return {"country": cleaned["country"], "rows": rows, "rejects": rejects}


def store_stats(enriched: dict) -> list[dict]:
    """Per store: orders, revenue and the mean order value with a 95%
    bootstrap confidence interval (seeded per store, so reproducible)."""
    by_store: dict[str, list[dict]] = defaultdict(list)
    for r in enriched["rows"]:
        by_store[r["store_id"]].append(r)
    out = []
    for store_id in sorted(by_store):
        rows = by_store[store_id]
        values = [r["revenue_eur"] for r in rows]
        n = len(values)
        rng = random.Random(f"bootstrap:{store_id}")
        means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(BOOTSTRAP_SAMPLES))
        low, high = _quantile(means, 0.025), _quantile(means, 0.975)
        out.append(
            {
                "store_id": store_id,
                "country": enriched["country"],
                "city": rows[0]["city"],
                "orders": n,
                "revenue_eur": sum(values),
                "mean_order_eur": sum(values) / n,
                "ci95_low_eur": low,
                "ci95_high_eur": high,
            }
        )
    return out


def combine_sales(enriched: list[dict]) -> dict:
    """Join the country branches (enrich_sales' list): all clean lines and
    all rejects."""
    rows = [r for part in enriched for r in part["rows"]]
    rows.sort(key=lambda r: (r["date"], r["country"], r["order_id"]))
    rejects = sorted((x for part in enriched for x in part["rejects"]), key=lambda x: (x["file"], x["line"]))
    return {"rows": rows, "rejects": rejects}


def daily_revenue(combined: dict) -> list[dict]:
    """Revenue per country and day (every day of the year, zero when there
    were no sales) with a trailing 7-day rolling mean."""
    orders: Counter = Counter()
    revenue: defaultdict = defaultdict(float)
    for r in combined["rows"]:
        orders[r["country"], r["date"]] += 1
        revenue[r["country"], r["date"]] += r["revenue_eur"]
    first = dt.date(YEAR, 1, 1)
    days = [(first + dt.timedelta(d)).isoformat() for d in range((dt.date(YEAR + 1, 1, 1) - first).days)]
    out = []
    for country in COUNTRIES:
        window: list[float] = []
        for day in days:
            value = revenue.get((country, day), 0.0)
            window.append(value)
            if len(window) > ROLLING_DAYS:
                window.pop(0)
            out.append(
                {
                    "country": country,
                    "date": day,
                    "orders": orders[country, day],
                    "revenue_eur": value,
                    "rolling_7d_eur": sum(window) / len(window),
                }
            )
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def category_stats(combined: dict) -> list[dict]:
    """Per product category: orders, units, revenue, mean and percentiles of
    the order-line value in EUR."""
    by_category: dict[str, list[dict]] = defaultdict(list)
    for r in combined["rows"]:
        by_category[r["category"]].append(r)
    out = []
    for category in sorted(by_category):
        rows = by_category[category]
        values = sorted(r["revenue_eur"] for r in rows)
        out.append(
            {
                "category": category,
                "orders": len(rows),
                "units": sum(r["qty"] for r in rows),
                "revenue_eur": sum(values),
                "mean_eur": statistics.fmean(values),
                "p50_eur": _quantile(values, 0.50),
                "p90_eur": _quantile(values, 0.90),
                "p99_eur": _quantile(values, 0.99),
            }
        )
    return out


def product_ranking(combined: dict, products: dict) -> list[dict]:
    """Every catalogue product ranked by revenue (unsold products last)."""
    units: Counter = Counter()
    revenue: defaultdict = defaultdict(float)
    for r in combined["rows"]:
        units[r["sku"]] += r["qty"]
        revenue[r["sku"]] += r["revenue_eur"]
    ranked = sorted(products, key=lambda sku: (-revenue.get(sku, 0.0), sku))
    return [
        {
            "rank": i,
            "sku": sku,
            "name": products[sku]["name"],
            "category": products[sku]["category"],
            "units": units[sku],
            "revenue_eur": revenue.get(sku, 0.0),
        }
        for i, sku in enumerate(ranked, 1)
    ]


# --------------------------------------------------------------------------
# Load and report: io-bound
# --------------------------------------------------------------------------

TABLES = {  # table -> (columns with types, primary key)
    "sales": (
        "order_id INTEGER, country TEXT, date TEXT, store_id TEXT, city TEXT, sku TEXT, "
        "category TEXT, qty INTEGER, unit_price REAL, currency TEXT, revenue_eur REAL",
        "country, order_id",
    ),
    "rejects": ("file TEXT, line INTEGER, reason TEXT, raw TEXT", "file, line"),
    "daily_revenue": (
        "country TEXT, date TEXT, orders INTEGER, revenue_eur REAL, rolling_7d_eur REAL",
        "country, date",
    ),
    "category_stats": (
        "category TEXT, orders INTEGER, units INTEGER, revenue_eur REAL, "
        "mean_eur REAL, p50_eur REAL, p90_eur REAL, p99_eur REAL",
        "category",
    ),
    "product_ranking": ("rank INTEGER, sku TEXT, name TEXT, category TEXT, units INTEGER, revenue_eur REAL", "sku"),
    "store_stats": (
        "store_id TEXT, country TEXT, city TEXT, orders INTEGER, revenue_eur REAL, "
        "mean_order_eur REAL, ci95_low_eur REAL, ci95_high_eur REAL",
        "store_id",
    ),
}


def _write_tables(db_path: str, tables: dict[str, list[dict]]) -> dict[str, int]:
    conn = sqlite3.connect(db_path, isolation_level=None)  # we manage the transaction
    try:
        conn.execute("BEGIN")
        for table, rows in tables.items():
            columns, key = TABLES[table]
            names = [c.split()[0] for c in columns.split(", ")]
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY ({key}))")
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                ([row[n] for n in names] for row in rows),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return {table: len(rows) for table, rows in tables.items()}


async def load_sqlite(
    db_path: str, combined: dict, daily: list, categories: list, ranking: list, stores: list[list]
) -> dict[str, int]:
    """Replace the output tables in one transaction; returns rows per table."""
    tables = {
        "sales": combined["rows"],
        "rejects": combined["rejects"],
        "daily_revenue": daily,
        "category_stats": categories,
        "product_ranking": ranking,
        "store_stats": [s for part in stores for s in part],
    }
    return await asyncio.to_thread(_write_tables, db_path, tables)


def _summarise(db_path: str) -> dict:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        q = conn.execute
        return {
            "row_counts": {t: q(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES},
            "top_products": q(
                "SELECT sku, name, category, revenue_eur FROM product_ranking ORDER BY rank LIMIT 5"
            ).fetchall(),
            "top_stores": q(
                "SELECT store_id, city, revenue_eur, mean_order_eur, ci95_low_eur, "
                "ci95_high_eur FROM store_stats "
                "ORDER BY revenue_eur DESC, store_id LIMIT 5"
            ).fetchall(),
            "revenue_by_country": q(
                "SELECT country, SUM(revenue_eur) FROM sales GROUP BY country ORDER BY 2 DESC"
            ).fetchall(),
            "rejects_by_reason": q(
                "SELECT reason, COUNT(*) FROM rejects GROUP BY reason ORDER BY 2 DESC, 1"
            ).fetchall(),
        }
    finally:
        conn.close()


async def report(db_path: str, loaded: dict[str, int]) -> dict:
    """Read the summary back from the database and check the load."""
    summary = await asyncio.to_thread(_summarise, db_path)
    if summary["row_counts"] != loaded:
        raise RuntimeError(f"database has {summary['row_counts']}, load wrote {loaded}")
    return summary


# --------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------


def build_graph(data_dir: str | Path, base_url: str, db_path: str | Path, name: str = "etl") -> taskmap.Graph:
    """The ETL pipeline as a taskmap graph (not yet run)."""
    data_dir, db_path = Path(data_dir), str(db_path)
    p = functools.partial
    funcs = {
        "read_products": p(read_text, str(data_dir / "products.csv")),
        "fetch_rates": p(fetch_json, f"{base_url}/rates.json"),
        "fetch_stores": p(fetch_json, f"{base_url}/stores.json"),
        "parse_products": parse_products,
        "list_sales_files": p(list_sales_files, str(data_dir)),
        "read_sales": read_sales,
        "clean_sales": clean_sales,
        "enrich_sales": enrich_sales,
        "store_stats": store_stats,
        "combine_sales": combine_sales,
        "daily_revenue": daily_revenue,
        "category_stats": category_stats,
        "product_ranking": product_ranking,
        "load_sqlite": p(load_sqlite, db_path),
        "report": p(report, db_path),
    }
    dependencies = {
        "read_products": [],
        "fetch_rates": [],
        "fetch_stores": [],
        "parse_products": ["read_products"],
        "list_sales_files": [],
        "read_sales": ["list_sales_files"],
        "clean_sales": ["read_sales"],
        "enrich_sales": ["clean_sales", "fetch_rates", "fetch_stores", "parse_products"],
        "store_stats": ["enrich_sales"],
        "combine_sales": ["enrich_sales"],
        "daily_revenue": ["combine_sales"],
        "category_stats": ["combine_sales"],
        "product_ranking": ["combine_sales", "parse_products"],
        "load_sqlite": [
            "combine_sales",
            "daily_revenue",
            "category_stats",
            "product_ranking",
            "store_stats",
        ],
        "report": ["load_sqlite"],
    }
    # one element per file found, each chained to the one of its file before it
    expand = {
        "read_sales": "list_sales_files",
        "clean_sales": "read_sales",
        "enrich_sales": "clean_sales",
        "store_stats": "enrich_sales",
    }
    io_bound = [
        "read_products",
        "fetch_rates",
        "fetch_stores",
        "load_sqlite",
        "report",
        "list_sales_files",
        "read_sales",
    ]
    # the HTTP API's calls share a resource, which a run bounds (API_LIMITS);
    # the SQLite load is the one writer of its database
    uses = {"fetch_rates": "api", "fetch_stores": "api", "load_sqlite": "db"}
    return taskmap.create_graph(funcs, dependencies, io_bound=io_bound, name=name, uses=uses, expand=expand)


# at most 2 API calls at once and 20 a second; one writer of the database
API_LIMITS = {"limits": {"api": 2, "db": 1}, "rates": {"api": 20}}


def _unfinished(value) -> bool:
    return isinstance(value, BaseException) or (isinstance(value, str) and value.startswith("Ancestor task "))


def task_status(graph: taskmap.Graph) -> dict[str, list]:
    """Tasks by outcome: done, failed (result is the exception) and skipped
    (an ancestor failed), plus not run (e.g. the run was interrupted).  An
    expanded task with an element that failed or was skipped is listed by
    its elements (``taskmap.Element``, printed ``clean_sales[1]``)."""
    status: dict[str, list] = {"done": [], "failed": [], "skipped": [], "not run": []}
    done = set(graph.done)
    for task in graph.dependencies:
        result = graph.results.get(task)
        if task in graph.expand and isinstance(result, list) and any(map(_unfinished, result)):
            outcomes = [(taskmap.Element(task, i), r, True) for i, r in enumerate(result)]
        else:
            outcomes = [(task, result, task in done)]
        for name, value, finished in outcomes:
            if isinstance(value, BaseException):
                status["failed"].append(name)
            elif isinstance(value, str) and value.startswith("Ancestor task "):
                status["skipped"].append(name)
            elif finished:
                status["done"].append(name)
            else:
                status["not run"].append(name)
    return status


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def _run(graph: taskmap.Graph, runner: str, ncores: int, progress: bool, trace: Path | None) -> None:
    # summary=True: record each task's times and worker for the summary table
    options = {"progress": progress, "trace": trace, "summary": True, **API_LIMITS}
    if runner == "parallel_async":
        taskmap.run_parallel_async(graph, ncores=ncores, **options)
    elif runner == "async":
        taskmap.run_async(graph, **options)
    else:
        taskmap.run(graph, **options)


def _print_report(summary: dict, db_path: str) -> None:
    print(f"wrote {db_path}")
    for table, count in summary["row_counts"].items():
        print(f"  {table:<16} {count:>6} rows")
    print(
        "revenue by country (EUR):  "
        + ", ".join(f"{country} {value:,.2f}" for country, value in summary["revenue_by_country"])
    )
    print("rejected lines:  " + ", ".join(f"{reason} {n}" for reason, n in summary["rejects_by_reason"]))
    print("top 5 products by revenue (EUR):")
    for i, (sku, name, category, revenue) in enumerate(summary["top_products"], 1):
        print(f"  {i}. {sku} {name:<28} {category:<11} {revenue:>11,.2f}")
    print("top 5 stores by revenue (EUR), mean order value with 95% bootstrap CI:")
    for i, (store, city, revenue, mean, low, high) in enumerate(summary["top_stores"], 1):
        print(f"  {i}. {store} {city:<14} {revenue:>11,.2f}   mean {mean:6.2f} [{low:6.2f}, {high:6.2f}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An ETL pipeline on taskmap: CSV files + an HTTP API -> SQLite.")
    parser.add_argument("--ncores", type=int, default=2, help="worker processes for the parallel runner (default 2)")
    parser.add_argument(
        "--db", type=Path, default=None, help="SQLite file to write (default: etl.sqlite in a new temporary directory)"
    )
    parser.add_argument(
        "--runner",
        choices=["parallel_async", "async", "sequential"],
        default="parallel_async",
        help="parallel_async: taskmap.run_parallel_async (default); async: taskmap.run_async; sequential: taskmap.run",
    )
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="input directory (default: examples/data)")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="simulated latency of the HTTP API, seconds (default 0.2)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the run's timeline to FILE (open it in https://ui.perfetto.dev)",
    )
    args = parser.parse_args(argv)

    if args.db is None:
        db_path = Path(tempfile.mkdtemp(prefix="taskmap-etl-")) / "etl.sqlite"
    else:
        db_path = args.db.resolve()
        db_path.parent.mkdir(parents=True, exist_ok=True)

    with reference_server(args.data, latency=args.latency) as base_url:
        graph = build_graph(args.data, base_url, db_path)
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        _run(graph, args.runner, args.ncores, progress, args.trace)

    status = task_status(graph)
    for task in status["failed"]:
        error = graph.results[task.task][task.index] if isinstance(task, taskmap.Element) else graph.results[task]
        print(f"FAILED {task}: {type(error).__name__}: {error}", file=sys.stderr)
    if "report" in status["done"]:
        _print_report(graph.results["report"], str(db_path))
    print()
    print(taskmap.summarize(graph), end="")  # counts, wall time, busy time, critical path
    if args.trace is not None:
        print(f"trace: {args.trace} (open it in https://ui.perfetto.dev)")
    return 0 if not (status["failed"] or status["skipped"] or status["not run"]) else 1


if __name__ == "__main__":
    sys.exit(main())
