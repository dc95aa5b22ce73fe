#!/usr/bin/env python3
"""How many functions could *any* keep-alive policy bring under a cold-start
threshold within a memory budget? An upper bound for the replayer's trace.

Usage:
    sprout-pool-sim --per-function-csv run.csv [...]   # any run; needs "fixed 10 min"
    python3 pool/analysis/ideal_bound.py run.csv [--threshold 50] [--budget-scale 1.0]
                                                 [--cold-cap fixed] [--time-of-day]

The ideal policy knows every function's arrival process as the generator
drew it (trigger kind, rate, burst spread, diurnal amplitude), its memory
and even how many requests it will get in the trace -- everything an
online policy has to learn. It acts on the time since the function's last
request only, as the hybrid policy does (with --time-of-day also on the
clock: it may load during a function's busy hours). For each function it
picks the share w of idle periods to end warm; the cheapest way to buy w:

- timer: load just before each firing (free);
- Poisson (flat): keep-alive after each request; any schedule costs w of
  the trace's time (memorylessness);
- diurnal: keep-alive K after each request, exactly integrated over the
  generator's rate profile (busy hours make short keep-alives pay more);
  with --time-of-day, loaded in the busiest hours that hold share w of the
  requests;
- bursty (log-normal gaps): keep-alive to the w-quantile, costing
  Phi(z - sigma) + exp(sigma z - sigma^2/2)(1 - w) of the time.

A function meets the threshold if, its first request being cold, enough of
its other requests are warm: P(Binomial(n - 1, w) >= n - floor(thr n)).
The bound maximises the expected number of such functions under the idle
memory budget (default: fixed 10-minute keep-alive's, from the CSV) and,
by default, no more cold starts overall than fixed 10 minutes (Lagrange
multipliers for both). One instance per function (concurrency ignored),
so it is optimistic on memory too.
"""

import argparse
import collections
import csv
import math
import sys

DAY = 86400.0
STEP = 300.0  # diurnal rate profile grid, s
WEEKEND = 0.7
MEAN_WEEK = (5 + 2 * WEEKEND) / 7
PHASE = 8 * 3600.0
W = [i / 50 for i in range(51)]  # warm shares considered


def load(path):
    by_policy = collections.defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            by_policy[r["policy"]].append(r)
    return by_policy


def rate_class(n, days):
    d = n / days
    return "<=1/h" if d <= 24 else ("<=1/min" if d <= 1440 else ">1/min")


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def phi_inv(p):
    lo, hi = -12.0, 12.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if phi(mid) < p else (lo, mid)
    return (lo + hi) / 2


def lognormal_duty(sigma):
    out = []
    for w in W:
        if w <= 0 or w >= 1:
            out.append(w)
            continue
        z = phi_inv(w)
        out.append(phi(z - sigma) + math.exp(sigma * z - sigma * sigma / 2) * (1 - w))
    return out


def profile(rate_per_day, amplitude, days):
    n = int(round(days * DAY / STEP))
    lam = []
    for i in range(n):
        t = (i + 0.5) * STEP
        week = WEEKEND if int(t // DAY) % 7 >= 5 else 1.0
        wave = 1 + amplitude * math.sin(2 * math.pi * (t - PHASE) / DAY)
        lam.append(rate_per_day / DAY / MEAN_WEEK * wave * week)
    return lam


def integral_exp(l, dt):
    x = l * dt
    return dt if x < 1e-9 else (1 - math.exp(-x)) / l


def keep_alive_curve(rate_per_day, amplitude, days):
    """(warm share, idle share of the trace) for keep-alives K after each
    request of a diurnal Poisson function, lambda piecewise constant."""
    lam = profile(rate_per_day, amplitude, days)
    n = len(lam)
    ks = [30 * 2 ** (i / 2) for i in range(27)]  # 30 s .. 3.4 days
    # The profile repeats: enough copies for the longest keep-alive.
    ext = lam * (2 + math.ceil(ks[-1] / (n * STEP)))
    cum = [0.0]
    for x in ext:
        cum.append(cum[-1] + x * STEP)
    total = cum[n]
    marks = [(int(k // STEP), k - int(k // STEP) * STEP) for k in ks]
    seg = [integral_exp(x, STEP) for x in ext]
    warm = [0.0] * len(ks)
    cost = [0.0] * len(ks)
    for i in range(n):
        weight = lam[i] * STEP
        acc, s, c0 = 0.0, 0, cum[i]
        for j, (m, frac) in enumerate(marks):
            while s < m:
                e = math.exp(-(cum[i + s] - c0))
                if e < 1e-12:
                    s = m
                    break
                acc += e * seg[i + s]
                s += 1
            e = math.exp(-(cum[i + m] - c0))
            cost[j] += weight * (acc + e * integral_exp(ext[i + m], frac))
            warm[j] += weight * (1 - e * math.exp(-ext[i + m] * frac))
    points = [(w / total, c / (days * DAY)) for w, c in zip(warm, cost)]
    out = []
    for w in W:
        reach = [c for (pw, c) in points if pw >= w - 1e-9]
        out.append(0.0 if w == 0 else min(min(reach) if reach else 1.0, 1.0))
    return out


def busiest_hours_curve(amplitude, days):
    lam = profile(1.0, amplitude, days)
    total = sum(lam)
    lam.sort(reverse=True)
    out, acc, k = [], 0.0, 0
    for w in W:
        while acc < w * total - 1e-12 and k < len(lam):
            acc += lam[k]
            k += 1
        out.append(k / len(lam))
    return out


def p_meets(n, w, threshold):
    need = n - math.floor(threshold * n)
    m = n - 1
    if need > m or w <= 0:
        return 0.0 if need > 0 else 1.0
    if w >= 1:
        return 1.0
    if n > 2000:  # normal regime: a step at the threshold
        return 1.0 if w > 1 - threshold + 0.02 else (0.0 if w < 1 - threshold - 0.02 else 0.5)
    lw, l1 = math.log(w), math.log(1 - w)
    p = 0.0
    for x in range(need, m + 1):
        p += math.exp(math.lgamma(m + 1) - math.lgamma(x + 1) - math.lgamma(m - x + 1) + x * lw + (m - x) * l1)
    return min(p, 1.0)


def functions(rows, days, threshold, time_of_day):
    cache = {}
    out = []
    for r in rows:
        n = int(r["invocations"])
        if n == 0:
            continue
        kind = r["arrivals"]
        if kind == "timer":
            duty = [0.0] * len(W)
        elif kind in ("bursty", "steady"):
            duty = lognormal_duty(float(r["lognormal_sigma"]))
        elif kind == "diurnal":
            a = round(float(r["diurnal_amplitude"]) / 0.15) * 0.15
            if time_of_day:
                key = ("tod", a)
                if key not in cache:
                    cache[key] = busiest_hours_curve(a, days)
            else:
                rate = round(math.log10(max(float(r["rate_per_day"]), 0.05)) * 4) / 4
                key = (rate, a)
                if key not in cache:
                    cache[key] = keep_alive_curve(10 ** rate, a, days)
            duty = cache[key]
        else:
            duty = list(W)
        gb_h = days * 24 * float(r["memory_mb"]) / 1024
        out.append(dict(
            n=n,
            cls=(rate_class(n, days), kind),
            cost=[d * gb_h for d in duty],
            meets=[p_meets(n, w, threshold) for w in W],
        ))
    return out


def choose(fs, mu, nu):
    met = mem = cold = 0.0
    picks = []
    for f in fs:
        best = max(range(len(W)), key=lambda i: f["meets"][i] + nu * f["n"] * W[i] - mu * f["cost"][i])
        picks.append(best)
        met += f["meets"][best]
        mem += f["cost"][best]
        cold += f["n"] * (1 - W[best])
    return met, mem, cold, picks


def solve(fs, budget, cold_cap, requests):
    """Largest expected count within the budget (and the cold-start cap)."""
    def at(nu):
        lo, hi = 1e-7, 100.0
        for _ in range(40):
            mu = math.sqrt(lo * hi)
            _, mem, _, _ = choose(fs, mu, nu)
            lo, hi = (mu, hi) if mem > budget else (lo, mu)
        return choose(fs, hi, nu)

    if cold_cap is None:
        return at(0.0)
    result = at(0.0)
    if result[2] / requests <= cold_cap:
        return result
    lo, hi = 1e-8, 1.0
    for _ in range(30):
        nu = math.sqrt(lo * hi)
        r = at(nu)
        if r[2] / requests > cold_cap:
            lo = nu
        else:
            hi, result = nu, r
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--threshold", type=float, default=50.0, help="cold-start %% to meet")
    ap.add_argument("--budget-scale", type=float, nargs="*", default=[1.0],
                    help="idle memory budgets as multiples of fixed 10 min's")
    ap.add_argument("--cold-cap", default="fixed", help="'fixed' (fixed 10 min's ratio), 'none', or a ratio")
    ap.add_argument("--time-of-day", action="store_true", help="the ideal policy may use the clock")
    ap.add_argument("--days", type=float, default=7.0)
    args = ap.parse_args()

    runs = load(args.csv)
    if "fixed 10 min" not in runs:
        sys.exit("the CSV has no 'fixed 10 min' policy to take the budget from")
    base = runs["fixed 10 min"]
    base_gb_h = sum(float(r["idle_mb_secs"]) for r in base) / 1024 / 3600
    requests = sum(int(r["invocations"]) for r in base)
    base_cold = sum(int(r["cold_starts"]) for r in base) / requests
    cap = {"fixed": base_cold, "none": None}.get(args.cold_cap)
    if cap is None and args.cold_cap not in ("none",):
        cap = float(args.cold_cap)
    fs = functions(base, args.days, args.threshold / 100, args.time_of_day)
    print(f"{len(fs)} invoked functions, {requests} requests; fixed 10 min: {base_gb_h:.0f} idle GB-h, "
          f"{100 * base_cold:.2f}% cold; need {math.ceil(0.75 * len(fs))} at <= {args.threshold:g}% cold for the p75")
    for scale in args.budget_scale:
        met, mem, cold, picks = solve(fs, scale * base_gb_h, cap, requests)
        print(f"\nbudget {100 * scale:.0f}% ({mem:.0f} GB-h), cold-start cap "
              f"{'none' if cap is None else f'{100 * cap:.2f}%'}: expected {met:.0f} functions "
              f"= {100 * met / len(fs):.1f}% at <= {args.threshold:g}% cold; overall cold {100 * cold / requests:.2f}%")
        by = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for f, i in zip(fs, picks):
            row = by[f["cls"]]
            row[0] += 1
            row[1] += f["meets"][i]
            row[2] += f["cost"][i]
        for cls in sorted(by):
            n, met_c, gb = by[cls]
            print(f"  {cls[0]:>8} {cls[1]:<8} {n:5d} functions, {met_c:6.0f} meet it, {gb:7.0f} GB-h")


if __name__ == "__main__":
    main()
