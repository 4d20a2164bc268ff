"""Property: any sequence of custom field writes and definition changes (new fields, deleted
fields, archived options, required flags, valid and invalid values) leaves every record
valid against the organization's live definitions, as the API shows them."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_domain.custom_definitions import Definition
from crm_domain.validation import custom_values

from .api import ApiClient

KEYS = ("a", "b", "c")
OPTIONS = ("x", "y", "z")
TYPES = ("text", "number", "boolean", "date", "datetime", "single_select", "multi_select", "url")

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(["", "1.5", "-2", "2026-01-31", "2026-01-31T10:00:00+05:00", "https://a.b"]),
    st.sampled_from(OPTIONS),
    st.lists(st.sampled_from(OPTIONS), max_size=3),
    st.text(max_size=5),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("define"), st.sampled_from(KEYS), st.sampled_from(TYPES), st.booleans()),
        st.tuples(st.just("delete"), st.sampled_from(KEYS)),
        st.tuples(st.just("archive"), st.sampled_from(KEYS), st.sampled_from(OPTIONS)),
        st.tuples(st.just("require"), st.sampled_from(KEYS), st.booleans()),
        st.tuples(
            st.just("write"),
            st.integers(0, 2),
            st.dictionaries(st.sampled_from((*KEYS, "zz")), values, max_size=3),
        ),
    ),
    max_size=12,
)


def _definitions(api: ApiClient, user: Any) -> dict[str, dict[str, Any]]:
    r = api.get("/custom-fields", user=user, org=user.org_id, query={"entity": "deal"})
    return {d["key"]: d for d in r.get_json()["items"]}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_records_stay_valid_against_their_definitions(api: ApiClient, ops: list[Any]) -> None:
    owner = api.register()
    org = owner.org_id
    contact = api.contact(owner)["id"]
    deals = [api.deal(owner, contact_id=contact)["id"] for _ in range(3)]
    for op in ops:
        live = _definitions(api, owner)
        if op[0] == "define":
            _, key, kind, required = op
            body: dict[str, Any] = {"entity": "deal", "key": key, "label": key, "type": kind}
            if kind.endswith("select"):
                body["options"] = [{"value": v, "label": v} for v in OPTIONS]
            r = api.post("/custom-fields", user=owner, org=org, json=body | {"required": required})
            assert r.status_code in (201, 409), r.get_json()
        elif op[0] == "delete" and op[1] in live:
            r = api.delete(f"/custom-fields/{live[op[1]]['id']}", user=owner, org=org)
            assert r.status_code == 204
        elif op[0] == "archive" and op[1] in live and live[op[1]]["options"]:
            options = [
                o | {"archived": o["archived"] or o["value"] == op[2]}
                for o in live[op[1]]["options"]
            ]
            r = api.patch(
                f"/custom-fields/{live[op[1]]['id']}",
                user=owner,
                org=org,
                json={"options": options},
            )
            assert r.status_code == 200, r.get_json()
        elif op[0] == "require" and op[1] in live:
            r = api.patch(
                f"/custom-fields/{live[op[1]]['id']}", user=owner, org=org, json={"required": op[2]}
            )
            assert r.status_code == 200, r.get_json()
        elif op[0] == "write":
            r = api.patch(
                f"/deals/{deals[op[1]]}", user=owner, org=org, json={"custom_fields": op[2]}
            )
            assert r.status_code in (200, 400), r.get_json()

    live = _definitions(api, owner)
    items = api.get("/deals", user=owner, org=org).get_json()["items"]
    assert len(items) == 3
    for item in items:
        shown = item["custom_fields"]
        assert set(shown) == set(live)  # every live key, nothing else
        for key, value in shown.items():
            if value is None:
                continue
            d = live[key]
            definition = Definition(
                id=d["id"],
                key=key,
                type=d["type"],
                required=d["required"],
                options={o["value"]: o["archived"] for o in d["options"]},
            )
            # Stored in its canonical form, of the field's type (an archived option it had
            # already is kept: `previous`).
            assert custom_values.clean(definition, value, previous=value) == value
