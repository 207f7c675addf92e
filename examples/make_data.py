"""Generate the synthetic input data of the ETL example (``examples/etl.py``).

A small coffee-and-stationery retailer with shops in four countries exports one
sales file per country, in the local currency.  Reference data (exchange rates
and store metadata) comes from an HTTP API that ``etl.py`` stands up locally.

    examples/data/sales_<country>.csv   order lines, ~2% of them dirty
    examples/data/products.csv          the product catalogue
    examples/data/rates.json            monthly exchange rates (served over HTTP)
    examples/data/stores.json           store metadata (served over HTTP)

The output is a pure function of the seed: ``python examples/make_data.py``
rewrites the committed files byte for byte.  ``generate()`` also returns the
ground truth (which lines are clean, and why each dirty line is dirty), which
the tests use to check the pipeline independently of its own parsing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import random
from pathlib import Path

SEED = 2024
ROWS_PER_COUNTRY = 2000
DIRTY_FRACTION = 0.02
DUPLICATE_FRACTION = 0.003
YEAR = 2024

COUNTRIES = {  # country -> (currency, [(store_id, city, opened, busyness)])
    "uk": (
        "GBP",
        [
            ("LON1", "London", "2015-04-01", 3.0),
            ("LON2", "London", "2019-09-14", 2.0),
            ("MAN1", "Manchester", "2017-03-02", 1.5),
            ("EDI1", "Edinburgh", "2020-06-20", 1.0),
        ],
    ),
    "us": (
        "USD",
        [
            ("NYC1", "New York", "2016-10-10", 3.0),
            ("NYC2", "New York", "2021-02-01", 1.5),
            ("CHI1", "Chicago", "2018-05-05", 1.5),
            ("SFO1", "San Francisco", "2019-11-11", 2.0),
        ],
    ),
    "se": (
        "SEK",
        [
            ("STO1", "Stockholm", "2014-08-15", 2.5),
            ("GOT1", "Gothenburg", "2018-01-20", 1.5),
            ("MAL1", "Malmo", "2022-04-04", 1.0),
        ],
    ),
    "de": (
        "EUR",
        [
            ("BER1", "Berlin", "2016-02-29", 2.5),
            ("MUC1", "Munich", "2017-07-07", 2.0),
            ("HAM1", "Hamburg", "2019-03-03", 1.5),
            ("FRA1", "Frankfurt", "2021-12-01", 1.0),
        ],
    ),
}

START_RATES = {"EUR": 1.0, "GBP": 0.855, "USD": 1.085, "SEK": 11.35}  # units per 1 EUR

CATALOGUE = {  # category -> (price range in EUR, product names)
    "Coffee": (
        (6.0, 24.0),
        [
            "House Blend 250g",
            "Espresso Roast 250g",
            "Ethiopia Yirgacheffe 250g",
            "Colombia Huila 250g",
            "Decaf Blend 250g",
            "Cold Brew Pack",
            "Guatemala Antigua 500g",
            "Sumatra Mandheling 250g",
        ],
    ),
    "Tea": (
        (4.0, 16.0),
        [
            "English Breakfast 50 bags",
            "Earl Grey 100g",
            "Sencha 100g",
            "Chamomile 30 bags",
            "Chai Spice 100g",
            "Rooibos 100g",
        ],
    ),
    "Bakery": (
        (1.5, 6.0),
        [
            "Butter Croissant",
            "Cinnamon Bun",
            "Blueberry Muffin",
            "Sourdough Loaf",
            "Almond Biscotti 6-pack",
            "Banana Bread Slice",
            "Chocolate Cookie",
        ],
    ),
    "Equipment": (
        (12.0, 140.0),
        [
            "Pour-over Dripper",
            "Paper Filters 100",
            "Burr Grinder",
            "French Press 1l",
            "Milk Frother",
            "Gooseneck Kettle",
        ],
    ),
    "Mugs": (
        (8.0, 28.0),
        ["Stoneware Mug", "Travel Mug 350ml", "Espresso Cup Set", "Double-wall Glass", "Enamel Camp Mug"],
    ),
    "Stationery": (
        (2.0, 22.0),
        [
            "Notebook A5",
            "Notebook A6",
            "Fountain Pen",
            "Gel Pens 4-pack",
            "Desk Planner 2024",
            "Postcard Set",
            "Tote Bag",
            "Gift Card Holder",
        ],
    ),
}

QTY_WEIGHTS = {1: 50, 2: 25, 3: 12, 4: 7, 5: 4, 6: 2}

# Dirty values, one defect per dirty line; the reason is what etl.py must report.
DEFECTS = {
    "bad date": ("date", ["2024-02-30", "2024-13-01", "14/03/2024", "", "2024/06/01"]),
    "bad quantity": ("qty", ["", "0", "-1", "two", "1.5"]),
    "bad unit_price": ("unit_price", ["", "n/a", "-3.50", "0", "nan"]),
    "unknown store": ("store_id", ["ZZZ9", "LON9", "XXX1"]),
    "unknown sku": ("sku", ["P999", "P000", "SKU-1"]),
    "malformed row": (None, None),
}

FIELDS = ["order_id", "date", "store_id", "sku", "qty", "unit_price"]


def _products(rng: random.Random) -> list[dict]:
    products = []
    for category, ((low, high), names) in CATALOGUE.items():
        for name in names:
            products.append(
                {
                    "sku": f"P{len(products) + 1:03d}",
                    "name": name,
                    "category": category,
                    "list_price_eur": round(rng.uniform(low, high), 2),
                }
            )
    return products


def _rates(rng: random.Random) -> dict:
    monthly, current = {}, dict(START_RATES)
    for month in range(1, 13):
        for cur in ("GBP", "USD", "SEK"):
            current[cur] *= 1 + rng.gauss(0, 0.012)
        monthly[f"{YEAR}-{month:02d}"] = {cur: round(rate, 4) for cur, rate in sorted(current.items())}
    return {"base": "EUR", "note": "units of currency per 1 EUR, monthly average", "monthly": monthly}


def _date_weights() -> tuple[list[dt.date], list[float]]:
    days = [dt.date(YEAR, 1, 1) + dt.timedelta(d) for d in range(366)]
    weights = []
    for day in days:
        w = 1.4 if day.weekday() >= 5 else 1.0
        w *= {12: 1.6, 11: 1.2, 7: 0.8, 8: 0.75}.get(day.month, 1.0)
        weights.append(w)
    return days, weights


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows(rows)
    return out.getvalue()


def generate(seed: int = SEED) -> tuple[dict[str, str], dict]:
    """Return ``(files, truth)``.

    ``files`` maps file name -> text.  ``truth[country]`` has ``clean``: the
    clean order lines as typed records (order_id, date, store_id, sku, qty,
    unit_price), and ``dirty``: ``(line number, reason)`` for every dirty line.
    """
    rng = random.Random(seed)
    products = _products(rng)
    rates = _rates(rng)
    days, day_weights = _date_weights()
    # a few products sell far more than the rest
    popularity = [1.0 / (rank + 1) ** 0.8 for rank in range(len(products))]
    rng.shuffle(popularity)

    files: dict[str, str] = {}
    truth: dict[str, dict] = {}
    stores_meta = []
    for country, (currency, stores) in COUNTRIES.items():
        for store_id, city, opened, _ in stores:
            stores_meta.append(
                {"store_id": store_id, "city": city, "country": country, "currency": currency, "opened": opened}
            )
        dates = sorted(rng.choices(days, day_weights, k=ROWS_PER_COUNTRY))
        order_id = rng.randrange(100_000, 900_000)
        lines: list[list[str]] = []
        clean: list[tuple] = []
        dirty: list[tuple[int, str]] = []
        for day in dates:
            order_id += rng.randint(1, 3)
            store = rng.choices(stores, [s[3] for s in stores])[0][0]
            product = rng.choices(products, popularity)[0]
            qty = rng.choices(list(QTY_WEIGHTS), list(QTY_WEIGHTS.values()))[0]
            rate = rates["monthly"][day.strftime("%Y-%m")][currency]
            price = round(product["list_price_eur"] * rate * rng.uniform(0.95, 1.05), 2)
            record = (order_id, day.isoformat(), store, product["sku"], qty, price)
            line = [str(order_id), day.isoformat(), store, product["sku"], str(qty), f"{price:.2f}"]
            line_no = len(lines) + 2  # line 1 is the header
            is_clean = rng.random() >= DIRTY_FRACTION
            if not is_clean:
                reason = rng.choice(sorted(DEFECTS))
                field, values = DEFECTS[reason]
                if field is None:
                    line = line[: rng.randint(2, 5)]
                else:
                    line[FIELDS.index(field)] = rng.choice(values)
                dirty.append((line_no, reason))
            else:
                if rng.random() < 0.01:  # harmless padding the cleaner must strip
                    column = rng.choice([2, 3, 4])
                    line[column] = f" {line[column]} "
                clean.append(record)
            lines.append(line)
            if is_clean and rng.random() < DUPLICATE_FRACTION:
                lines.append(list(line))  # the same order exported twice
                dirty.append((len(lines) + 1, "duplicate order_id"))
        files[f"sales_{country}.csv"] = _csv_text(lines)
        truth[country] = {"currency": currency, "clean": clean, "dirty": dirty}

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sku", "name", "category", "list_price_eur"])
    writer.writerows([p["sku"], p["name"], p["category"], f"{p['list_price_eur']:.2f}"] for p in products)
    files["products.csv"] = out.getvalue()
    files["rates.json"] = json.dumps(rates, indent=1) + "\n"
    files["stores.json"] = json.dumps({"stores": stores_meta}, indent=1) + "\n"
    return files, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="directory to write the files to (default: examples/data)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    files, truth = generate(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8", newline="")
    total = sum(len(text.encode()) for text in files.values())
    n_clean = sum(len(t["clean"]) for t in truth.values())
    n_dirty = sum(len(t["dirty"]) for t in truth.values())
    print(
        f"wrote {len(files)} files ({total / 1024:.0f} KiB) to {args.out}: "
        f"{n_clean} clean and {n_dirty} dirty order lines"
    )


if __name__ == "__main__":
    main()
