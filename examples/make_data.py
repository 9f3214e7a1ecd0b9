"""Regenerate the bundled template data (deterministic: same seed, same bytes).

    python examples/make_data.py

Writes CSV files into templates/*/data/. The data is synthetic but has real structure:
churn depends on tenure, charges, support tickets and usage trend; house prices on size,
rooms, location and the market trend at the time of sale, so models trained on the
point-in-time training sets beat a baseline and leakage would show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent / "templates"
START = pd.Timestamp("2025-01-01", tz="UTC")


def churn(seed: int = 7, customers: int = 2000, months: int = 12) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.arange(1001, 1001 + customers)
    signup = START + pd.to_timedelta(rng.integers(0, 60, customers), unit="D")
    plan = rng.choice(["basic", "standard", "premium"], customers, p=[0.5, 0.35, 0.15])
    region = rng.choice(["dubai", "abu_dhabi", "sharjah", "ajman", "ras_al_khaimah"], customers)
    age = rng.integers(18, 80, customers)
    base_charge = np.select([plan == "basic", plan == "standard"], [99.0, 179.0], 299.0)
    profile = pd.DataFrame(
        {
            "customer_id": ids,
            "updated_at": signup,
            "age": age,
            "plan": plan,
            "region": region,
            "monthly_charges": np.round(base_charge * rng.uniform(0.85, 1.25, customers), 2),
            "email": [f"customer{i}@example.ae" for i in ids],
        }
    )
    # A plan change for some customers later in the year: a second profile row.
    movers = rng.choice(customers, customers // 10, replace=False)
    later = profile.iloc[movers].copy()
    later["updated_at"] = START + pd.to_timedelta(rng.integers(150, 300, len(movers)), unit="D")
    later["plan"] = "premium"
    later["monthly_charges"] = np.round(299.0 * rng.uniform(0.85, 1.25, len(movers)), 2)
    profile = pd.concat([profile, later]).sort_values(["updated_at", "customer_id"]).reset_index(drop=True)

    engagement = rng.normal(0, 1, customers)
    rows = []
    for m in range(months):
        ts = START + pd.DateOffset(months=m + 1)
        trend = engagement - 0.08 * m * (engagement < -0.5)
        rows.append(
            pd.DataFrame(
                {
                    "customer_id": ids,
                    "event_ts": ts,
                    "calls": np.maximum(0, rng.poisson(np.exp(2.5 + 0.4 * trend))),
                    "data_gb": np.round(np.maximum(0, rng.gamma(2.0, 3.0 + 2 * np.clip(trend, -1.2, 3))), 3),
                    "support_tickets": rng.poisson(np.exp(-1.2 - 0.6 * trend)),
                    "late_payments": rng.binomial(2, 1 / (1 + np.exp(2.0 + trend))),
                }
            )
        )
    usage = pd.concat(rows).reset_index(drop=True)

    # Labels: each customer observed at two dates; churn in the following month.
    label_rows = []
    for k, month in enumerate((6, 11)):
        ts = START + pd.DateOffset(months=month) + pd.Timedelta(days=3)
        recent = usage[(usage.event_ts <= ts) & (usage.event_ts > ts - pd.DateOffset(months=3))]
        agg = recent.groupby("customer_id").agg(t=("support_tickets", "mean"), c=("calls", "mean"), l=("late_payments", "sum"))
        logit = -2.6 + 0.9 * agg.t.values - 0.05 * agg.c.values + 0.5 * agg.l.values
        logit += 0.004 * (profile.drop_duplicates("customer_id").set_index("customer_id").loc[agg.index].monthly_charges.values - 170)
        p = 1 / (1 + np.exp(-logit))
        label_rows.append(
            pd.DataFrame({"customer_id": agg.index.values, "event_ts": ts, "churned": rng.binomial(1, p)})
        )
    labels = pd.concat(label_rows).reset_index(drop=True)
    return {"customers": profile, "usage": usage, "labels": labels}


def houses(seed: int = 11, n: int = 3000) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1)
    district = rng.choice(["marina", "downtown", "jvc", "deira", "al_barsha", "mirdif"], n)
    premium = pd.Series(district).map(
        {"marina": 1.35, "downtown": 1.6, "jvc": 0.9, "deira": 0.75, "al_barsha": 1.05, "mirdif": 0.95}
    ).values
    size = np.round(rng.lognormal(np.log(1100), 0.45, n), 0)
    rooms = np.clip(np.round(size / 450 + rng.normal(0, 0.6, n)), 0, 7).astype(int)
    built = rng.integers(1995, 2025, n)
    listed = START + pd.to_timedelta(rng.integers(0, 300, n), unit="D")
    listing = pd.DataFrame(
        {
            "property_id": ids,
            "listed_at": listed,
            "district": district,
            "size_sqft": size,
            "bedrooms": rooms,
            "year_built": built,
            "floor": rng.integers(0, 60, n),
            "has_pool": rng.random(n) < 0.3,
        }
    )
    # District market index, weekly.
    weeks = pd.date_range(START - pd.Timedelta(days=14), START + pd.Timedelta(days=400), freq="7D")
    market = []
    for d in sorted(set(district)):
        walk = np.cumsum(rng.normal(0.004, 0.01, len(weeks)))
        market.append(pd.DataFrame({"district": d, "week_ts": weeks, "price_index": np.round(100 * np.exp(walk), 3)}))
    market_df = pd.concat(market).reset_index(drop=True)
    sold = listed + pd.to_timedelta(rng.integers(10, 90, n), unit="D")
    idx = np.searchsorted(weeks.values, sold.values, side="right") - 1
    index_at_sale = np.array(
        [market_df[(market_df.district == d)].price_index.values[i] for d, i in zip(district, idx, strict=True)]
    )
    price = (
        1450 * size * premium * (index_at_sale / 100) * (1 + 0.03 * (built - 2010) / 10) * (1 + 0.08 * listing.has_pool)
    ) * rng.lognormal(0, 0.08, n)
    labels = pd.DataFrame({"property_id": ids, "district": district, "sold_at": sold, "price_aed": np.round(price, -3)})
    return {"listings": listing, "market": market_df, "sales": labels}


def write(frames: dict[str, pd.DataFrame], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        out = frame.copy()
        for col in out.columns:
            if isinstance(out[col].dtype, pd.DatetimeTZDtype):
                out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.to_csv(folder / f"{name}.csv", index=False)


if __name__ == "__main__":
    data = churn()
    write(data, ROOT / "tabular-classification" / "data")
    write(data, ROOT / "torch-tabular" / "data")
    write(houses(), ROOT / "regression" / "data")
    print("wrote", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/data/*.csv")))
