"""GET /contacts/{id}/duplicates on one organization with N contacts (default 100,000), in a
table shared with two other organizations (N / 2 contacts each).

Names are realistic: first and last names drawn from 118 x 216 common ones (some 25,000
distinct names, 4 contacts each on average), 4 in 5 with an e-mail, 2 in 3 with a phone, 1 in 40
trashed; and the worst case for the similar-name lookup: 1,000 contacts of the organization
(and 500 of another) named "Margaret Hamilton", 200 of them with the same phone.

In-process (Flask's test client, the real PostgreSQL and Redis; no HTTP server):
1. wall-clock p50 and p95 of the duplicates of contacts drawn at random from the organization;
2. the same for one of the 1,000 "Margaret Hamilton"s; and, for the fixed cost of a request,
   GET /contacts/{id} of the contacts of 1;
3. the plan of each lookup of that request (EXPLAIN ANALYZE of the statements it ran): which
   index serves the e-mail, the phone and the similar-name lookups.

  BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/postgres \\
  BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python bench/duplicates.py [--contacts 100000]

Prints the figures and the load average (the machine is shared: note it)."""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import API, KEY_PREFIX, log
from bench.in_process import register, wall
from bench.infra import own_database, psycopg_url, start_infra

_FIRST_NAMES = (
    "james mary robert patricia john jennifer michael linda david elizabeth william barbara "
    "richard susan joseph jessica thomas sarah charles karen christopher lisa daniel nancy "
    "matthew betty anthony margaret mark sandra donald ashley steven kimberly paul emily andrew "
    "donna joshua michelle kenneth carol kevin amanda brian dorothy george melissa timothy "
    "deborah ronald stephanie edward rebecca jason sharon jeffrey laura ryan cynthia jacob "
    "kathleen gary amy nicholas angela eric shirley jonathan anna stephen brenda larry pamela "
    "justin emma scott nicole brandon helen benjamin samantha samuel katherine gregory "
    "christine alexander debra frank rachel patrick carolyn raymond janet jack catherine dennis "
    "maria jerry heather tyler diane aaron ruth jose julie adam olivia nathan joyce henry "
    "virginia douglas victoria zachary kelly peter lauren"
)
_LAST_NAMES = (
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez "
    "gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white "
    "harris sanchez clark ramirez lewis robinson walker young allen king wright scott torres "
    "nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter roberts "
    "gomez phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales "
    "murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos "
    "kim cox ward richardson watson brooks chavez wood james bennett gray mendoza ruiz hughes "
    "price alvarez castillo sanders patel myers long ross foster jimenez powell jenkins perry "
    "russell sullivan bell coleman butler henderson barnes gonzales fisher vasquez simmons "
    "romero jordan patterson alexander graham reynolds griffin wallace moreno west cole hayes "
    "bryant herrera gibson ellis tran medina aguilar stevens murray ford castro marshall owens "
    "harrison fernandez mcdonald woods washington kennedy wells vargas henry chen freeman webb "
    "tucker guzman burns crawford olson simpson porter hunter gordon mendez silva shaw snyder "
    "mason dixon munoz hunt hicks holmes palmer wagner black robertson boyd rose stone salazar "
    "fox warren mills meyer rice schmidt garza daniels ferguson nichols stephens soto weaver "
    "ryan gardner payne grant dunn kelley spencer hawkins arnold pierce vazquez hansen peters "
    "santos hart bradley knight elliott cunningham duncan armstrong hudson carroll lane riley"
)
FIRST, LAST = _FIRST_NAMES.split(), _LAST_NAMES.split()
SAME_NAME, SAME_NAME_COUNT, SAME_PHONE = "Margaret Hamilton", 1000, "+44 20 7946 0321"


def _seed(url: str, orgs: list[tuple[int, int, int]]) -> None:
    """(organization, owner, contacts) each; the first gets the 1,000 same names."""
    import psycopg

    rng = random.Random(17)
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for n, (org, owner, count) in enumerate(orgs):
            with conn.cursor().copy(
                "COPY contacts (organization_id, owner_id, name, email, phone, deleted_at) "
                "FROM STDIN"
            ) as copy:
                for i in range(count):
                    first, last = rng.choice(FIRST), rng.choice(LAST)
                    email = f"{first}.{last}{i}@example{i % 7}.com" if i % 5 else None
                    phone = f"+1 {rng.randrange(10**9, 10**10)}" if i % 3 else None
                    trashed = "2026-01-01" if i % 40 == 0 else None
                    row = (org, owner, f"{first.title()} {last.title()}", email, phone, trashed)
                    copy.write_row(row)
                for i in range(SAME_NAME_COUNT // (1 + n)):
                    phone = SAME_PHONE if i < 200 else None
                    copy.write_row((org, owner, SAME_NAME, f"mh{i}@example.com", phone, None))
        conn.execute("VACUUM (ANALYZE) contacts")


def _timings(
    client: Any, headers: dict[str, str], ids: list[int], path: str = "/duplicates"
) -> list[float]:
    return [wall(client, "GET", f"{API}/contacts/{i}{path}", headers) * 1000 for i in ids]


def _plans(app: Any, client: Any, headers: dict[str, str], contact_id: int) -> list[str]:
    """The plan of each contacts statement one duplicates request runs, as it ran."""
    from sqlalchemy import event

    engine = app.extensions["crm_db"].engine
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if re.search(r"FROM contacts\b", statement) and "LIMIT" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        wall(client, "GET", f"{API}/contacts/{contact_id}/duplicates", headers)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        for statement, params in seen:
            raw = conn.connection.driver_connection
            rows = raw.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", params).fetchall()
            plans.append("\n".join(r[0] for r in rows))
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000, help="of the organization")
    parser.add_argument("--requests", type=int, default=200, help="per measurement")
    args = parser.parse_args()

    infra = start_infra(os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL"))
    name = f"crm_dupes_bench_{os.getpid()}"  # a database of its own, dropped at the end
    try:
        with own_database(infra, name, REDIS_KEY_PREFIX=f"{KEY_PREFIX}-dupes") as url:
            from crm_api import create_app

            app = create_app(OUTBOX_DISPATCH="none", RATELIMIT_ENABLED=False)
            client = app.test_client()
            tenants = [register(client, f"Duplicates Bench {n}") for n in range(3)]
            org, _, headers = tenants[0]
            counts = [args.contacts, args.contacts // 2, args.contacts // 2]
            _seed(url, [(o, owner, c) for (o, owner, _), c in zip(tenants, counts, strict=True)])
            log(f"seeded {sum(counts)} contacts ({args.contacts} in the measured organization)")

            import psycopg

            with psycopg.connect(psycopg_url(url)) as conn:
                live = "organization_id = %s AND deleted_at IS NULL"
                ids = [r[0] for r in conn.execute(f"SELECT id FROM contacts WHERE {live}", (org,))]
                same = next(
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM contacts WHERE {live} AND name = %s "
                        "AND phone IS NOT NULL ORDER BY id LIMIT 1",
                        (org, SAME_NAME),
                    )
                )
            rng = random.Random(3)
            _timings(client, headers, rng.sample(ids, 20))  # warm up
            load_before = os.getloadavg()
            sample = rng.sample(ids, args.requests)
            drawn = sorted(_timings(client, headers, sample))
            worst = sorted(_timings(client, headers, [same] * args.requests))
            alone = sorted(_timings(client, headers, sample, path=""))
            load_after = os.getloadavg()
            plans = _plans(app, client, headers, same)

            def figures(ms: list[float]) -> str:
                p95 = ms[int(len(ms) * 0.95) - 1]
                return f"p50 {statistics.median(ms):7.2f} ms, p95 {p95:7.2f} ms"

            print(f"GET /contacts/{{id}}/duplicates, {args.contacts} contacts in the organization")
            print(f"  a contact drawn at random ({args.requests}):   {figures(drawn)}")
            print(f"  one of {SAME_NAME_COUNT} '{SAME_NAME}' ({args.requests}): {figures(worst)}")
            print(f"  (GET /contacts/{{id}} of the drawn ones:  {figures(alone)})")
            print(f"load average before {load_before}, after {load_after}")
            for plan in plans:
                print("\n" + plan)
            app.extensions["crm_db"].dispose()
            return 0
    finally:
        infra.stop()


if __name__ == "__main__":
    log("duplicates at scale")
    raise SystemExit(main())
