"""TensorClient against a real TensorServer on loopback (real grpclib, real sockets)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import torch
from grpclib.const import Status

from skytorch.errors import (
    RemoteHandlerError,
    ServerUnavailableError,
    TensorRejectedError,
    TransportError,
    UnsupportedTensorError,
)
from skytorch.server import TensorServer
from skytorch.transport import DTYPES, TensorClient
from tests.plugins.transport import double, fail_on_negative
from tests.test_codec import same, sample

SHAPES = [(), (0,), (3, 0), (5,), (4, 3, 2)]


async def test_send_tensors_stores_them_and_replies_like_the_seed(tensor_client: TensorClient,
                                                                  tensor_server: TensorServer) -> None:
    t1, t2 = torch.randn(100, 100), torch.randn(50, 50)
    reply = await tensor_client.send_tensors(t1, t2)
    assert reply.success
    assert reply.message == "Received 2 tensor(s)"
    assert len(reply.tensor_ids) == 2 and len(set(reply.tensor_ids)) == 2
    stored = await tensor_client.receive_tensors(parameters={"ids": ",".join(reply.tensor_ids)})
    assert torch.equal(stored[0], t1) and torch.equal(stored[1], t2)


async def test_receive_tensors_seed_calls(tensor_client: TensorClient) -> None:
    one = await tensor_client.receive_tensors(count=1)
    assert len(one) == 1 and one[0].shape == (10, 10) and one[0].dtype == torch.float32
    two = await tensor_client.receive_tensors(count=2, parameters={"shape": "20,20"})
    assert [t.shape for t in two] == [(20, 20), (20, 20)]
    assert not torch.equal(two[0], two[1])  # randn by default
    ar = await tensor_client.receive_tensors(count=1, parameters={"shape": "2,3", "dtype": "int16", "fill": "arange"})
    assert torch.equal(ar[0], torch.arange(6, dtype=torch.int16).reshape(2, 3))
    ones = await tensor_client.receive_tensors(count=1, parameters={"shape": "4", "dtype": "bfloat16", "fill": "ones"})
    assert torch.equal(ones[0], torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", sorted(DTYPES))
async def test_every_dtype_and_shape_class_round_trips_all_three_rpcs(tensor_client: TensorClient, name: str) -> None:
    tensors = [sample(DTYPES[name], shape) for shape in SHAPES]
    ids = [f"{name}-{i}" for i in range(len(tensors))]
    reply = await tensor_client.send_tensors(*tensors, ids=ids)
    assert list(reply.tensor_ids) == ids
    back = await tensor_client.receive_tensors(parameters={"ids": ",".join(ids), "pop": "true"})
    echoed = await tensor_client.stream_tensors(*tensors)
    for original, got, echo in zip(tensors, back, echoed, strict=True):
        assert same(got, original), (name, original.shape)
        assert same(echo, original), (name, original.shape)


async def test_views_go_as_contiguous_and_multi_chunk_tensors_survive(tensor_server: TensorServer) -> None:
    async with TensorClient("127.0.0.1", tensor_server.port, chunk_size=64 * 1024) as client:
        base = torch.randn(300, 500)
        views = [base.t(), base[::3, 1::2], base.unsqueeze(0).expand(3, 300, 500), torch.randn(700_000)]
        out = await client.stream_tensors(*views)
        for view, got in zip(views, out, strict=True):
            assert got.is_contiguous() and torch.equal(got, view)


async def test_pop_removes_and_unknown_ids_are_not_found(tensor_client: TensorClient) -> None:
    await tensor_client.send_tensors(torch.ones(3), ids=["keep"])
    await tensor_client.receive_tensors(parameters={"ids": "keep", "pop": "true"})
    with pytest.raises(TensorRejectedError, match="keep") as info:
        await tensor_client.receive_tensors(parameters={"ids": "keep"})
    assert info.value.status is Status.NOT_FOUND
    assert info.value.target == tensor_client.target


async def test_unknown_parameter_names_the_accepted_ones(tensor_client: TensorClient) -> None:
    with pytest.raises(TensorRejectedError, match="colour.*accepted: ids, pop, shape, dtype, fill") as info:
        await tensor_client.receive_tensors(count=1, parameters={"colour": "red"})
    assert info.value.status is Status.INVALID_ARGUMENT
    assert (await tensor_client.receive_tensors(count=1))[0].shape == (10, 10)


async def test_progress_reports_bytes_done_and_total(tensor_server: TensorServer) -> None:
    calls: list[tuple[int, int]] = []
    async with TensorClient("127.0.0.1", tensor_server.port, chunk_size=1 << 20) as client:
        tensor = torch.randn(1 << 20)  # 4 MiB: 4 chunks
        await client.send_tensors(tensor, progress=lambda done, total: calls.append((done, total)))
        assert len(calls) == 4
        assert calls[-1] == (4 << 20, 4 << 20)
        assert all(total == 4 << 20 for _, total in calls)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        received: list[tuple[int, int]] = []
        await client.receive_tensors(count=2, parameters={"shape": "262144"},
                                     progress=lambda d, t: received.append((d, t)))
        assert received[-1] == (2 << 20, 2 << 20)


async def test_async_iterator_forms_stream_lazily(tensor_client: TensorClient) -> None:
    produced = 0

    async def tensors():
        nonlocal produced
        for i in range(20):
            produced += 1
            yield torch.full((1000,), float(i))

    seen = 0
    async for result in tensor_client.iter_stream_tensors(tensors()):
        assert torch.equal(result, torch.full((1000,), float(seen)))
        seen += 1
    assert seen == produced == 20

    reply = await tensor_client.send_tensor_stream(torch.full((10,), float(i)) for i in range(5))
    assert reply.success and len(reply.tensor_ids) == 5

    got = [t.shape async for t in tensor_client.iter_receive_tensors(3, {"shape": "2,2"})]
    assert got == [(2, 2)] * 3


async def test_stream_results_come_back_before_the_input_stream_ends(tensor_client: TensorClient) -> None:
    # Each input is produced only after the previous result arrived: a server that
    # waited for the end of the input stream (no pipelining) would hang here.
    results: asyncio.Queue[torch.Tensor] = asyncio.Queue()

    async def interactive():
        value = torch.zeros(3)
        for _ in range(5):
            yield value + 1
            value = await results.get()

    async def consume() -> list[torch.Tensor]:
        seen = []
        async for result in tensor_client.iter_stream_tensors(interactive()):
            seen.append(result)
            await results.put(result)
        return seen

    seen = await asyncio.wait_for(consume(), timeout=60)
    assert [float(t[0]) for t in seen] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_accelerator_tensors_are_copied_to_cpu_on_send(tensor_server_factory) -> None:
    server = await tensor_server_factory(device="cuda")
    async with TensorClient("127.0.0.1", server.port) as client:
        gpu = torch.randn(64, 64, device="cuda")
        reply = await client.send_tensors(gpu, ids=["g"])
        assert server.service.store.get("g").device.type == "cuda"
        back = await client.receive_tensors(parameters={"ids": "g"})
        assert back[0].device.type == "cpu" and torch.equal(back[0], gpu.cpu())
        echoed = await client.stream_tensors(gpu.t())
        assert torch.equal(echoed[0], gpu.t().cpu())
        assert reply.success


async def test_stream_tensors_runs_the_handler_in_order(tensor_server_factory) -> None:
    server = await tensor_server_factory(handler=double)
    async with TensorClient("127.0.0.1", server.port) as client:
        inputs = [torch.arange(5.0), torch.ones(2, 2), torch.tensor(3.0)]
        outputs = await client.stream_tensors(*inputs)
        assert all(torch.equal(o, i * 2) for i, o in zip(inputs, outputs, strict=True))


async def test_handler_exception_becomes_an_error_and_the_server_lives_on(tensor_server_factory) -> None:
    server = await tensor_server_factory(handler=fail_on_negative)
    async with TensorClient("127.0.0.1", server.port) as client:
        with pytest.raises(RemoteHandlerError, match="negative values are not allowed") as info:
            await client.stream_tensors(torch.ones(3), -torch.ones(3))
        assert info.value.status is Status.INTERNAL
        out = await client.stream_tensors(torch.zeros(2))
        assert torch.equal(out[0], torch.ones(2))


@pytest.mark.parametrize(("result", "match"), [
    (lambda t: t.to_sparse(), "has layout torch.sparse_coo"),
    (lambda t: [t], "is a list, not a torch.Tensor"),
], ids=["sparse", "list"])
async def test_unsendable_handler_result_is_a_handler_error_naming_the_tensor(tensor_server_factory, result,
                                                                               match: str) -> None:
    server = await tensor_server_factory(handler=lambda tensor, metadata: result(tensor))
    async with TensorClient("127.0.0.1", server.port) as client:
        with pytest.raises(RemoteHandlerError, match=f"handler result for tensor '[0-9a-f]+' {match}") as info:
            await client.stream_tensors(torch.ones(3))
        assert info.value.status is Status.INTERNAL


async def test_unsupported_tensor_is_refused_before_sending(tensor_client: TensorClient,
                                                            tensor_server: TensorServer) -> None:
    with pytest.raises(UnsupportedTensorError, match="sparse"):
        await tensor_client.send_tensors(torch.ones(2), torch.eye(3).to_sparse())
    assert len(tensor_server.service.store) == 0  # not even the first tensor went out
    with pytest.raises(TypeError, match="meta"):
        await tensor_client.stream_tensors(torch.empty(2, device="meta"))


async def test_unreachable_server_names_host_and_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        async with TensorClient("127.0.0.1", port) as client:
            with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}") as info:
                await client.send_tensors(torch.ones(1))
            assert info.value.target == f"127.0.0.1:{port}"
            with pytest.raises(ServerUnavailableError):
                await client.health()


async def test_health_and_one_connection_reused(tensor_client: TensorClient) -> None:
    assert await tensor_client.health() is True
    channel = tensor_client._channel
    await tensor_client.send_tensors(torch.ones(2))
    await tensor_client.receive_tensors()
    assert tensor_client._channel is channel


async def test_closed_client_raises() -> None:
    client = TensorClient("127.0.0.1", 1)
    await client.close()
    with pytest.raises(TransportError, match="closed"):
        await client.send_tensors(torch.ones(1))


def test_client_reconnects_when_used_from_another_event_loop() -> None:
    async def start_server(ready: list, stop: asyncio.Event, loop_box: list) -> None:
        loop_box.append(asyncio.get_running_loop())
        from skytorch.server import Settings

        async with TensorServer(Settings(host="127.0.0.1", port=0, device="cpu")) as server:
            ready.append(server.port)
            await stop.wait()

    ready: list[int] = []
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: asyncio.run(start_server(ready, stop, loop_box)))
    thread.start()
    try:
        while not ready:
            threading.Event().wait(0.01)
        client = TensorClient("127.0.0.1", ready[0])
        first = asyncio.run(client.stream_tensors(torch.arange(4)))
        second = asyncio.run(client.stream_tensors(torch.arange(3)))  # a new loop: must reconnect
        assert torch.equal(first[0], torch.arange(4)) and torch.equal(second[0], torch.arange(3))
        assert asyncio.run(client.health())
        asyncio.run(client.close())
    finally:
        loop_box[0].call_soon_threadsafe(stop.set)
        thread.join(30)
