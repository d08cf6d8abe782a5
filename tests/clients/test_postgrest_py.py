"""postgrest-py against pgrpc: the calls a Python service makes to PostgREST.

Run by tests/it/clients.rs, which starts pgrpc with the fixtures of
ITEMS_FIXTURES (api.add_item, api.items, api.refuse_item) and passes its
URL and a service token in PGRPC_URL and PGRPC_TOKEN. Every expected value
is computed here from the rows this suite inserts, never copied from a
server answer.
"""

import csv
import io
import os
import uuid

import pytest
from postgrest import APIError, CountMethod, SyncPostgrestClient

SCORES = [7, 3, 9, 1, 5]


@pytest.fixture(scope="module")
def client():
    url = os.environ["PGRPC_URL"]
    token = os.environ["PGRPC_TOKEN"]
    with SyncPostgrestClient(
        url, schema="api", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        yield c


@pytest.fixture(scope="module")
def rows(client):
    """Five items under a tag of their own, inserted through the API."""
    tag = f"t-{uuid.uuid4().hex[:8]}"
    made = []
    for i, score in enumerate(SCORES):
        r = client.rpc("add_item", {"name": f"item {i}", "score": score, "tag": tag}).execute()
        assert len(r.data) == 1
        made.append(r.data[0])
    return tag, made


def test_rpc_with_filters_order_and_limit(client, rows):
    tag, made = rows
    r = (
        client.rpc("items", {"tag": tag})
        .gt("score", 2)
        .order("score", desc=True)
        .limit(2)
        .execute()
    )
    expected = sorted((m for m in made if m["score"] > 2), key=lambda m: -m["score"])[:2]
    assert r.data == expected


def test_rpc_with_select_and_in_filter(client, rows):
    tag, made = rows
    wanted = [made[0]["id"], made[3]["id"]]
    r = client.rpc("items", {"tag": tag}).select("id", "name").in_("id", wanted).order("id").execute()
    assert r.data == [{"id": m["id"], "name": m["name"]} for m in made if m["id"] in wanted]


def test_rpc_with_range(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}).order("id").range(1, 3).execute()
    assert r.data == sorted(made, key=lambda m: m["id"])[1:4]


def test_rpc_by_get_with_filters(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}, get=True).lte("score", 5).order("score").execute()
    assert r.data == sorted((m for m in made if m["score"] <= 5), key=lambda m: m["score"])


def test_count_exact_without_head(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}, count=CountMethod.exact).gte("score", 3).limit(1).execute()
    assert r.count == len([m for m in made if m["score"] >= 3])
    assert len(r.data) == 1


def test_count_with_head(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}, count=CountMethod.exact, head=True).execute()
    assert r.count == len(made)
    assert not r.data


def test_single(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}).eq("id", made[2]["id"]).single().execute()
    assert r.data == made[2]


def test_single_with_many_rows_is_an_error(client, rows):
    tag, _ = rows
    with pytest.raises(APIError) as err:
        client.rpc("items", {"tag": tag}).single().execute()
    assert err.value.code == "PGRST116"


def test_maybe_single(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}).eq("id", made[4]["id"]).maybe_single().execute()
    assert r.data == made[4]
    none = client.rpc("items", {"tag": tag}).eq("score", 1000).maybe_single().execute()
    assert none is None


def test_csv(client, rows):
    tag, made = rows
    r = client.rpc("items", {"tag": tag}).order("id").csv().execute()
    got = list(csv.DictReader(io.StringIO(r.data)))
    assert got == [{k: str(v) for k, v in m.items()} for m in sorted(made, key=lambda m: m["id"])]


def test_error_carries_code_message_details_and_hint(client):
    name = f"n-{uuid.uuid4().hex[:6]}"
    with pytest.raises(APIError) as err:
        client.rpc("refuse_item", {"name": name}).execute()
    e = err.value
    assert (e.code, e.message, e.details, e.hint) == (
        "PT409",
        "item_taken",
        f"An item named {name} exists.",
        "Pick another name.",
    )


def test_unknown_column_is_42703(client, rows):
    tag, _ = rows
    with pytest.raises(APIError) as err:
        client.rpc("items", {"tag": tag}).eq("nope", 1).execute()
    assert err.value.code == "42703"
