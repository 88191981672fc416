#!/usr/bin/env python3
"""Writes synthetic usage counts in Sluice's Redis layout (see Sources/SluiceStore/Redis/RedisUsage.swift)
to standard output as Redis protocol, for `redis-cli --pipe`.

usage: report-seed.py PREFIX LAST_DAY DAYS PARTNERS ROUTES
Each partner/day/route row gets realistic counts: weekday traffic, some 4xx, rate-limited and 5xx
(a partner-wide incident on one day), bytes, and a latency histogram in the gateway's buckets.
"""
import datetime, math, random, sys

prefix, last, days, partners, routes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
last_day = datetime.date.fromisoformat(last)
random.seed(13)
out = sys.stdout.buffer

def command(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    out.write(b"".join(parts))

def bucket(microseconds):
    if microseconds < 100: return 0
    return min(250, int(math.log(microseconds / 100) / math.log(1.1)) + 1)

# A few latency shapes (log-normal around 4-400 ms), as bucket -> share.
shapes = []
for median_ms in [4, 12, 35, 90, 400]:
    counts = {}
    for _ in range(4000):
        b = bucket(median_ms * 1000 * math.exp(random.gauss(0, 0.6)))
        counts[b] = counts.get(b, 0) + 1
    shapes.append({b: c / 4000 for b, c in counts.items()})

expiry = int(datetime.datetime(last_day.year, last_day.month, last_day.day, tzinfo=datetime.timezone.utc).timestamp()) + 400 * 86400
for d in range(days):
    day = last_day - datetime.timedelta(days=days - 1 - d)
    weekend = day.weekday() >= 5
    day_key = f"{prefix}:{{usage}}:{day.isoformat()}"
    names = []
    for p in range(partners):
        partner = f"partner-{p:02d}"
        names.append(partner)
        incident = (d + p) % 11 == 5
        fields = []
        for r in range(routes):
            version = "v2" if r % 4 else "v1"
            route = f"route-{r:02d}"
            requests = int(random.randint(200, 3000) * (0.35 if weekend else 1.0))
            e5 = int(requests * (0.08 if incident else 0.004))
            limited = int(requests * random.choice([0, 0, 0.01, 0.05]))
            e4 = int(requests * 0.02) + limited
            ok = requests - e4 - e5
            shape = shapes[(p + r) % len(shapes)]
            counters = [requests, ok, e4, e5, limited // 2, limited - limited // 2, 0, requests // 50,
                        requests // 20 if r % 5 == 0 else 0, requests * 800, requests * 2400]
            text = " ".join(str(c) for c in counters)
            for b, share in sorted(shape.items()):
                text += f" {b}:{max(1, int(share * requests))}"
            fields += [f"{version}|{route}", text]
        key = f"{day_key}:{partner}"
        command("HSET", key, *fields)
        command("EXPIREAT", key, expiry)
    command("SADD", day_key, *names)
    command("EXPIREAT", day_key, expiry)
