"""The API emulator's own semantics, exercised through the real kubernetes_asyncio client over HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.emulator import FakeOperator, KubeEmulator

G, V, P = "compute.skytorch.dev", "v1alpha1", "computes"
APPLY = "application/apply-patch+yaml"


def compute(name: str, **spec) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Compute", "metadata": {"name": name, "namespace": "default"},
            "spec": spec or {"suspend": False}}


async def apply(api, body: dict, manager: str = "skytorch-python-client", force: bool = True):
    return await client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, "default", P, body["metadata"]["name"], body, field_manager=manager, force=force,
        _content_type=APPLY)


async def get(api, name: str) -> dict:
    return await client.CustomObjectsApi(api).get_namespaced_custom_object(G, V, "default", P, name)


async def test_discovery_lists_computes_with_status_subresource(kube_api_client):
    version = await client.VersionApi(kube_api_client).get_code()
    assert version.major == "1"
    groups = await client.ApisApi(kube_api_client).get_api_versions()
    assert G in [g.name for g in groups.groups]
    resources = await client.CustomObjectsApi(kube_api_client).get_api_resources(G, V)
    names = {r.name for r in resources.resources}
    assert {"computes", "computes/status"} <= names
    core = await client.CoreV1Api(kube_api_client).get_api_resources()
    assert {"events", "pods", "namespaces", "configmaps"} <= {r.name for r in core.resources}


async def test_apply_creates_then_updates_with_managed_fields(kube_api_client, kube_emulator: KubeEmulator):
    created = await apply(kube_api_client, compute("a", image="img:1", suspend=False))
    assert created is None  # 201 Created: kubernetes_asyncio only decodes 200 bodies of a patch, as with a real API
    assert kube_emulator.requests_made("PATCH")[-1].status == 201
    obj = await get(kube_api_client, "a")
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    [entry] = meta["managedFields"]
    assert entry["manager"] == "skytorch-python-client" and entry["operation"] == "Apply"
    assert entry["fieldsV1"] == {"f:spec": {"f:image": {}, "f:suspend": {}}}

    again = await apply(kube_api_client, compute("a", image="img:1", suspend=False))
    assert again["metadata"]["resourceVersion"] == meta["resourceVersion"], "a no-op apply changes nothing"

    updated = await apply(kube_api_client, compute("a", image="img:2", suspend=False))
    assert updated["spec"]["image"] == "img:2"
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    dropped = await apply(kube_api_client, compute("a", suspend=True))
    assert "image" not in dropped["spec"], "a field the manager no longer applies is removed"


async def test_apply_conflicts_between_managers_unless_forced(kube_api_client):
    await apply(kube_api_client, compute("b", image="one", suspend=False), manager="alice")
    with pytest.raises(ApiException) as info:
        await apply(kube_api_client, compute("b", image="two", suspend=False), manager="bob", force=False)
    assert info.value.status == 409
    body = json.loads(info.value.body)
    assert body["reason"] == "Conflict" and 'conflict with "alice"' in body["message"] and ".spec.image" in body["message"]

    same_value = await apply(kube_api_client, compute("b", image="one", suspend=False), manager="bob", force=False)
    assert {e["manager"] for e in same_value["metadata"]["managedFields"]} == {"alice", "bob"}

    forced = await apply(kube_api_client, compute("b", image="two", suspend=False), manager="bob", force=True)
    assert forced["spec"]["image"] == "two"
    owners = {e["manager"]: e["fieldsV1"] for e in forced["metadata"]["managedFields"]}
    assert "f:image" in owners["bob"]["f:spec"]
    assert "f:image" not in owners.get("alice", {}).get("f:spec", {})


async def test_status_subresource_separates_spec_and_status(kube_api_client):
    api = client.CustomObjectsApi(kube_api_client)
    await apply(kube_api_client, compute("c", image="x", suspend=False))
    status = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok", "message": "",
                                         "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}
    ignored = await api.patch_namespaced_custom_object(G, V, "default", P, "c", {"spec": {"image": "y"}, **status},
                                                       _content_type="application/merge-patch+json")
    assert "status" not in ignored, "a write to the main resource leaves status alone"
    assert ignored["spec"]["image"] == "y"
    written = await api.patch_namespaced_custom_object_status(G, V, "default", P, "c",
                                                              {"spec": {"image": "z"}, **status},
                                                              _content_type="application/merge-patch+json")
    assert written["status"]["conditions"][0]["status"] == "True"
    assert written["spec"]["image"] == "y", "a status write leaves spec alone"
    assert written["metadata"]["generation"] == ignored["metadata"]["generation"], "status does not bump generation"
    replaced = await api.replace_namespaced_custom_object(G, V, "default", P, "c", {**written, "status": {}})
    assert replaced["status"]["conditions"][0]["status"] == "True"


@pytest.mark.parametrize("name, spec, text", [
    ("Bad_Name", {"suspend": False}, "RFC 1035"),
    ("a" * 64, {"suspend": False}, "no more than 63 characters"),
    ("9lives", {"suspend": False}, "RFC 1035"),
    ("fine", {}, "spec in body should have at least 1 properties"),
])
async def test_invalid_computes_get_422(kube_api_client, name, spec, text):
    body = compute(name)
    body["spec"] = spec
    for call in (apply(kube_api_client, body),
                 client.CustomObjectsApi(kube_api_client).create_namespaced_custom_object(G, V, "default", P, body)):
        with pytest.raises(ApiException) as info:
            await call
        assert info.value.status == 422
        status = json.loads(info.value.body)
        assert status["kind"] == "Status" and status["reason"] == "Invalid" and text in status["message"]


async def test_resource_version_is_global_and_bumped_on_every_change(kube_api_client):
    core = client.CoreV1Api(kube_api_client)
    one = await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="one")))
    two = await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="two")))
    assert int(two.metadata.resource_version) == int(one.metadata.resource_version) + 1
    patched = await core.patch_namespaced_config_map("one", "default", {"data": {"k": "v"}})
    assert int(patched.metadata.resource_version) > int(two.metadata.resource_version)
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="one")))
    assert info.value.status == 409
    stale = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="one", resource_version=one.metadata.resource_version))
    with pytest.raises(ApiException) as info:
        await core.replace_namespaced_config_map("one", "default", stale)
    assert info.value.status == 409


async def test_json_patch_and_label_selectors(kube_api_client):
    core = client.CoreV1Api(kube_api_client)
    for name, labels in (("x", {"app": "a", "tier": "1"}), ("y", {"app": "b"}), ("z", {"tier": "2"})):
        await core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels=labels)))
    async def names(selector):
        return sorted(i.metadata.name for i in (await core.list_namespaced_config_map("default", label_selector=selector)).items)
    assert await names("app=a") == ["x"]
    assert await names("app!=a") == ["y", "z"]
    assert await names("app in (a,b)") == ["x", "y"]
    assert await names("tier,!app") == ["z"]
    patched = await core.patch_namespaced_config_map("y", "default", [{"op": "add", "path": "/data", "value": {"k": "v"}}])
    assert patched.data == {"k": "v"}


async def watch_events(api, *, rv=None, timeout=5, stop_after=None, **kwargs):
    out = []
    w = watch.Watch()
    params = {"field_selector": kwargs.pop("field_selector", None), "timeout_seconds": timeout, **kwargs}
    if rv is not None:
        params["resource_version"] = rv
    try:
        async for event in w.stream(client.CustomObjectsApi(api).list_namespaced_custom_object, G, V, "default", P,
                                    **{k: v for k, v in params.items() if v is not None}):
            out.append((event["type"], event["raw_object"]))
            if stop_after and len(out) >= stop_after:
                break
    finally:
        await w.close()
    return out


async def test_watch_replays_from_resource_version_with_field_selector(kube_api_client):
    await apply(kube_api_client, compute("w1", image="a", suspend=False))
    start = (await get(kube_api_client, "w1"))["metadata"]["resourceVersion"]
    await apply(kube_api_client, compute("w2", image="a", suspend=False))
    await apply(kube_api_client, compute("w1", image="b", suspend=False))
    await apply(kube_api_client, compute("w1", image="c", suspend=False))
    events = await watch_events(kube_api_client, rv=start, field_selector="metadata.name=w1", stop_after=2)
    assert [(t, o["spec"]["image"]) for t, o in events] == [("MODIFIED", "b"), ("MODIFIED", "c")]
    fresh = await watch_events(kube_api_client, field_selector="metadata.name=w2", stop_after=1)
    assert [(t, o["metadata"]["name"]) for t, o in fresh] == [("ADDED", "w2")]


async def test_watch_streams_live_changes_and_deletion(kube_api_client, kube_emulator: KubeEmulator):
    await apply(kube_api_client, compute("live", image="a", suspend=False))
    rv = (await get(kube_api_client, "live"))["metadata"]["resourceVersion"]
    task = asyncio.create_task(watch_events(kube_api_client, rv=rv, field_selector="metadata.name=live", stop_after=2))
    while kube_emulator.open_watches() == 0:
        await asyncio.sleep(0.01)
    await apply(kube_api_client, compute("other", image="a", suspend=False))
    await apply(kube_api_client, compute("live", image="b", suspend=False))
    await client.CustomObjectsApi(kube_api_client).delete_namespaced_custom_object(G, V, "default", P, "live")
    events = await asyncio.wait_for(task, 10)
    assert [t for t, _ in events] == ["MODIFIED", "DELETED"]


async def test_watch_from_compacted_version_is_410_gone(kube_api_client, kube_emulator: KubeEmulator):
    await apply(kube_api_client, compute("old", image="a", suspend=False))
    rv = (await get(kube_api_client, "old"))["metadata"]["resourceVersion"]
    await apply(kube_api_client, compute("old", image="b", suspend=False))
    kube_emulator.compact()
    with pytest.raises(ApiException) as info:
        await watch_events(kube_api_client, rv=rv, field_selector="metadata.name=old")
    assert info.value.status == 410
    raw = await client.CustomObjectsApi(kube_api_client).list_namespaced_custom_object(
        G, V, "default", P, watch=True, resource_version=rv, _preload_content=False)
    line = json.loads(await raw.content.readline())
    raw.release()
    assert line["type"] == "ERROR" and line["object"]["code"] == 410 and line["object"]["reason"] == "Expired"


async def test_history_limit_expires_old_versions(kube_api_client):
    small = KubeEmulator(history_limit=3)
    with small.running():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {small.token}"}) as http:
            url = f"{small.url}/api/v1/namespaces/default/configmaps"
            rvs = []
            for i in range(6):
                async with http.post(url, json={"metadata": {"name": f"m{i}"}}) as r:
                    rvs.append((await r.json())["metadata"]["resourceVersion"])
            async with http.get(url, params={"watch": "true", "resourceVersion": rvs[0]}) as r:
                assert json.loads(await r.content.readline())["object"]["code"] == 410
            async with http.get(url, params={"watch": "true", "resourceVersion": rvs[3]}) as r:
                event = json.loads(await r.content.readline())
                assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "m4"


async def test_dropped_watch_connection_fails_the_stream(kube_api_client, kube_emulator: KubeEmulator):
    rv = str(kube_emulator.store.rv)
    task = asyncio.create_task(watch_events(kube_api_client, rv=rv, timeout=30))
    while kube_emulator.open_watches() == 0:
        await asyncio.sleep(0.01)
    assert kube_emulator.drop_watches() == 1
    with pytest.raises((aiohttp.ClientError, ConnectionError)):
        await asyncio.wait_for(task, 10)


async def test_watch_timeout_and_bookmarks(kube_emulator: KubeEmulator):
    kube_emulator.bookmark_interval = 0.05
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {kube_emulator.token}"}) as http:
        url = f"{kube_emulator.url}/apis/{G}/{V}/namespaces/default/{P}"
        params = {"watch": "1", "resourceVersion": str(kube_emulator.store.rv), "allowWatchBookmarks": "true",
                  "timeoutSeconds": "1"}
        async with http.get(url, params=params) as r:
            lines = [json.loads(line) async for line in r.content if line.strip()]
    assert lines and {e["type"] for e in lines} == {"BOOKMARK"}
    assert lines[0]["object"]["metadata"]["resourceVersion"] == str(kube_emulator.store.rv)


async def test_delete_records_grace_period_and_honours_finalizers(kube_api_client, kube_emulator: KubeEmulator):
    api = client.CustomObjectsApi(kube_api_client)
    body = compute("fin", image="a", suspend=False)
    body["metadata"]["finalizers"] = ["example.com/keep"]
    await apply(kube_api_client, body)
    pending = await api.delete_namespaced_custom_object(G, V, "default", P, "fin", grace_period_seconds=12)
    assert pending["metadata"]["deletionTimestamp"] and pending["metadata"]["deletionGracePeriodSeconds"] == 12
    assert (await get(kube_api_client, "fin"))["metadata"]["deletionTimestamp"]
    [record] = kube_emulator.requests_made("DELETE", "/computes/fin")
    assert record.query["gracePeriodSeconds"] == "12"
    await api.patch_namespaced_custom_object(G, V, "default", P, "fin", {"metadata": {"finalizers": None}},
                                             _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as info:
        await get(kube_api_client, "fin")
    assert info.value.status == 404
    with pytest.raises(ApiException) as info:
        await api.delete_namespaced_custom_object(G, V, "default", P, "fin")
    assert info.value.status == 404


async def test_deleting_an_owner_collects_its_dependents(kube_api_client):
    await apply(kube_api_client, compute("owner", image="a", suspend=False))
    owner = await get(kube_api_client, "owner")
    core = client.CoreV1Api(kube_api_client)
    ref = client.V1OwnerReference(api_version=f"{G}/{V}", kind="Compute", name="owner", uid=owner["metadata"]["uid"])
    await core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="owner", owner_references=[ref])))
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="kept", owner_references=[ref])))
    await client.CustomObjectsApi(kube_api_client).delete_namespaced_custom_object(
        G, V, "default", P, "owner", body=client.V1DeleteOptions(propagation_policy="Background"))
    assert (await core.list_namespaced_service("default")).items == []
    assert (await core.list_namespaced_config_map("default")).items == []


async def test_events_filtered_by_involved_object(kube_api_client, kube_emulator: KubeEmulator):
    await apply(kube_api_client, compute("ev", image="a", suspend=False))
    await apply(kube_api_client, compute("ev2", image="a", suspend=False))
    obj = await get(kube_api_client, "ev")
    kube_emulator.emit_event(obj, "Created", "made it")
    kube_emulator.emit_event(await get(kube_api_client, "ev2"), "Created", "not this one")
    kube_emulator.emit_event(obj, "BackOff", "crashing", type="Warning")
    core = client.CoreV1Api(kube_api_client)
    events = await core.list_namespaced_event(
        "default", field_selector="involvedObject.kind=Compute,involvedObject.name=ev,involvedObject.namespace=default")
    assert sorted((e.reason, e.type) for e in events.items) == [("BackOff", "Warning"), ("Created", "Normal")]
    assert all(e.involved_object.uid == obj["metadata"]["uid"] for e in events.items)
    posted = await core.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="ev."), involved_object=client.V1ObjectReference(
            kind="Compute", name="ev", namespace="default"), reason="Logged", message="by a client", type="Normal"))
    assert posted.metadata.name.startswith("ev.")
    with pytest.raises(ApiException) as info:
        await core.list_namespaced_event("default", field_selector="spec.nope=1")
    assert info.value.status == 400 and "field label not supported" in info.value.body


async def test_injected_failures_and_request_log(kube_api_client, kube_emulator: KubeEmulator):
    rule = kube_emulator.fail("PATCH", r"/computes/denied$", 403)
    with pytest.raises(ApiException) as info:
        await apply(kube_api_client, compute("denied", suspend=False))
    status = json.loads(info.value.body)
    assert info.value.status == 403 and status["reason"] == "Forbidden"
    assert 'cannot patch resource "computes" in API group "compute.skytorch.dev"' in status["message"]
    assert rule.hits == 1
    kube_emulator.fail("GET", r"/computes/broken$", 500, times=1)
    with pytest.raises(ApiException) as info:
        await get(kube_api_client, "broken")
    assert info.value.status == 500
    with pytest.raises(ApiException) as info:
        await get(kube_api_client, "broken")
    assert info.value.status == 404, "the 500 was for one request only"
    log = kube_emulator.requests_made(path="/computes/")
    assert [(r.method, r.status) for r in log] == [("PATCH", 403), ("GET", 500), ("GET", 404)]
    assert log[0].content_type == APPLY and log[0].body["kind"] == "Compute"
    assert log[0].query == {"fieldManager": "skytorch-python-client", "force": "True"}


async def test_requests_without_the_token_are_unauthorized(kube_emulator: KubeEmulator):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{kube_emulator.url}/api/v1/namespaces") as r:
            assert r.status == 401


async def test_crd_created_in_the_emulator_is_served(kube_api_client):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                  "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                      "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}
    await client.ApiextensionsV1Api(kube_api_client).create_custom_resource_definition(crd)
    api = client.CustomObjectsApi(kube_api_client)
    made = await api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}})
    assert made["spec"]["size"] == 3
    with pytest.raises(ApiException) as info:
        await api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"size": "big"}})
    assert info.value.status == 422
    pruned = await api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "p"}, "spec": {"size": 1, "colour": "red"},
        "other": True})
    assert pruned["spec"] == {"size": 1} and "other" not in pruned, "fields the schema does not know are pruned"


async def test_fake_operator_drives_conditions_and_events(kube_api_client, kube_emulator: KubeEmulator):
    operator = FakeOperator(kube_emulator, ready_delay=None).start()
    try:
        await apply(kube_api_client, compute("op", image="a", suspend=False))
        async def ready_status():
            for _ in range(200):
                obj = await get(kube_api_client, "op")
                conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
                if "Ready" in conds:
                    return conds, obj
                await asyncio.sleep(0.02)
            raise AssertionError("no status")
        conds, obj = await ready_status()
        assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "StatefulSetNotReady"
        status_entry = [e for e in obj["metadata"]["managedFields"] if e.get("subresource") == "status"]
        assert status_entry[0]["manager"] == "skytorch-operator"
        operator.set_ready("op")
        conds, obj = await ready_status()
        assert conds["Ready"]["status"] == "True"
        await apply(kube_api_client, compute("op", image="a", suspend=True))
        for _ in range(200):
            conds, _ = await ready_status()
            if conds["Suspended"]["status"] == "True":
                break
            await asyncio.sleep(0.02)
        assert conds["Ready"]["status"] == "False" and conds["Suspended"]["status"] == "True"
        operator.fail("op", message="boom")
        conds, _ = await ready_status()
        assert conds["Ready"]["reason"] == "CrashLoopBackOff"
        events = (await client.CoreV1Api(kube_api_client).list_namespaced_event(
            "default", field_selector="involvedObject.name=op")).items
        reasons = [e.reason for e in sorted(events, key=lambda e: int(e.metadata.resource_version))]
        assert reasons == ["Created", "Started", "Ready", "Suspended", "BackOff"]
    finally:
        operator.stop()


async def test_emulator_runs_as_a_process(kube_emulator_process):
    from kubernetes_asyncio import config

    url, path = kube_emulator_process
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == url
    async with client.ApiClient(configuration) as api:
        namespaces = await client.CoreV1Api(api).list_namespace()
        assert "default" in [n.metadata.name for n in namespaces.items]
        await apply(api, compute("proc", image="a", suspend=False))
        for _ in range(200):
            obj = await get(api, "proc")
            if any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", [])):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the fake operator in the process never made the Compute ready")


async def test_process_hooks_over_http(kube_emulator_process):
    from kubernetes_asyncio import config

    from tests.emulator import EmulatorControl

    url, path = kube_emulator_process
    control = EmulatorControl(url)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        control.fail_compute("hooked")
        await apply(api, compute("hooked", image="a", suspend=False))

        async def ready_condition():
            for _ in range(200):
                obj = await get(api, "hooked")
                conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
                if "Ready" in conds:
                    return conds["Ready"]
                await asyncio.sleep(0.02)

        assert (await ready_condition())["reason"] == "CrashLoopBackOff"
        control.heal("hooked")
        for _ in range(200):
            if (await ready_condition())["status"] == "True":
                break
            await asyncio.sleep(0.05)
        assert (await ready_condition())["status"] == "True"
        control.fail("GET", "/computes/hooked$", 403, times=1)
        with pytest.raises(ApiException) as info:
            await get(api, "hooked")
        assert info.value.status == 403
        log = control.requests()
        assert {"method": "GET", "status": 403} .items() <= log[-1].items()
        assert log[0]["method"] == "PATCH" and log[0]["content_type"] == APPLY
        control.clear_requests()
        assert control.requests() == []
        rv = (await get(api, "hooked"))["metadata"]["resourceVersion"]
        await apply(api, compute("hooked", image="b", suspend=False))
        control.compact()
        with pytest.raises(ApiException) as info:
            await watch_events(api, rv=rv, field_selector="metadata.name=hooked")
        assert info.value.status == 410
        pending = asyncio.ensure_future(watch_events(api, rv=str(control.compact()), timeout=30))
        for _ in range(200):
            if control.drop_watches() == 1:
                break
            await asyncio.sleep(0.02)
        with pytest.raises((aiohttp.ClientError, ConnectionError)):
            await asyncio.wait_for(pending, 10)


async def test_orphan_propagation_and_namespace_deletion(kube_api_client):
    core = client.CoreV1Api(kube_api_client)
    await apply(kube_api_client, compute("parent", image="a", suspend=False))
    parent = await get(kube_api_client, "parent")
    ref = client.V1OwnerReference(api_version=f"{G}/{V}", kind="Compute", name="parent", uid=parent["metadata"]["uid"])
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="orphan", owner_references=[ref])))
    await client.CustomObjectsApi(kube_api_client).delete_namespaced_custom_object(
        G, V, "default", P, "parent", propagation_policy="Orphan")
    orphan = await core.read_namespaced_config_map("orphan", "default")
    assert not orphan.metadata.owner_references
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doomed")))
    await core.create_namespaced_config_map("doomed", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="inside")))
    await core.delete_namespace("doomed")
    assert (await core.list_namespaced_config_map("doomed")).items == []
    assert "doomed" not in [n.metadata.name for n in (await core.list_namespace()).items]


async def test_watch_sees_an_object_leave_its_label_selection(kube_api_client, kube_emulator: KubeEmulator):
    core = client.CoreV1Api(kube_api_client)
    made = await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="mover", labels={"pick": "me"})))
    await core.patch_namespaced_config_map("mover", "default", {"metadata": {"labels": {"pick": "other"}}})
    await core.patch_namespaced_config_map("mover", "default", {"metadata": {"labels": {"pick": "me"}}})
    w = watch.Watch()
    seen = []
    try:
        async for event in w.stream(core.list_namespaced_config_map, "default", label_selector="pick=me",
                                    resource_version=made.metadata.resource_version, timeout_seconds=5):
            seen.append(event["type"])
            if len(seen) == 2:
                break
    finally:
        await w.close()
    assert seen == ["DELETED", "ADDED"]


async def test_list_pages_with_limit_and_continue(kube_api_client):
    core = client.CoreV1Api(kube_api_client)
    for i in range(5):
        await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"p{i}")))
    first = await core.list_namespaced_config_map("default", limit=2)
    assert [i.metadata.name for i in first.items] == ["p0", "p1"] and first.metadata._continue
    rest = await core.list_namespaced_config_map("default", limit=10, _continue=first.metadata._continue)
    assert [i.metadata.name for i in rest.items] == ["p2", "p3", "p4"] and not rest.metadata._continue


async def test_no_new_finalizers_while_deleting(kube_api_client):
    core = client.CoreV1Api(kube_api_client)
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="held", finalizers=["a/b"])))
    await core.delete_namespaced_config_map("held", "default")
    with pytest.raises(ApiException) as info:
        await core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": ["a/b", "c/d"]}})
    assert info.value.status == 422
    await core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": []}})
    assert (await core.list_namespaced_config_map("default", field_selector="metadata.name=held")).items == []


async def test_watch_path_style_and_tokenless_kubeconfig(tmp_path):
    from kubernetes_asyncio import config

    open_emulator = KubeEmulator(token=None)
    with open_emulator.running():
        path = open_emulator.write_kubeconfig(tmp_path / "kc", namespace="ns-x", token=False)
        assert "token" not in path.read_text()
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(path), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            core = client.CoreV1Api(api)
            made = await core.create_namespaced_config_map("ns-x", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="old-style")))
        async with aiohttp.ClientSession() as http:
            url = f"{open_emulator.url}/api/v1/watch/namespaces/ns-x/configmaps"
            async with http.get(url, params={"resourceVersion": "0", "timeoutSeconds": "1"}) as r:
                events = [json.loads(line) async for line in r.content if line.strip()]
        assert [(e["type"], e["object"]["metadata"]["uid"]) for e in events] == [("ADDED", made.metadata.uid)]
        assert open_emulator.requests_made(path="/watch/")[0].is_watch
