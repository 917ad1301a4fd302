"""The tensor server: bad input over the wire, limits, settings, the process, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from skytorch.errors import ServerUnavailableError, TensorRejectedError
from skytorch.server import parse_settings
from skytorch.transport import TensorClient
from skytorch.transport._proto.skytorch.v1 import SendTensorsResponse, TensorChunk, TensorHeader
from skytorch.transport._wire import TunedChannel
from tests.plugins.transport import ROOT

MiB = 1 << 20


def header(dtype: str = "float32", shape: list[int] | None = None, nbytes: int | None = None) -> TensorHeader:
    shape = [2] if shape is None else shape
    if nbytes is None:
        nbytes = 4
        for dim in shape:
            nbytes *= dim
    return TensorHeader(dtype=dtype, shape=shape, nbytes=nbytes)


BAD_STREAMS = {
    "first chunk without header": [TensorChunk(tensor_id="bad", data=b"\0" * 8, last=True)],
    "unknown dtype": [TensorChunk(tensor_id="bad", header=header(dtype="float128"), data=b"\0" * 8, last=True)],
    "negative dimension": [TensorChunk(tensor_id="bad", header=header(shape=[-1, 2], nbytes=8), last=True)],
    "nbytes mismatch": [TensorChunk(tensor_id="bad", header=header(nbytes=12), data=b"\0" * 8, last=True)],
    "chunk out of order": [TensorChunk(tensor_id="bad", header=header(), data=b"\0" * 4),
                           TensorChunk(tensor_id="bad", chunk_index=2, data=b"\0" * 4, last=True)],
    "chunk duplicated": [TensorChunk(tensor_id="bad", header=header(), data=b"\0" * 4),
                         TensorChunk(tensor_id="bad", chunk_index=0, data=b"\0" * 4, last=True)],
    "chunk missing (last too early)": [TensorChunk(tensor_id="bad", header=header(), data=b"\0" * 4, last=True)],
    "more data than nbytes": [TensorChunk(tensor_id="bad", header=header(), data=b"\0" * 16, last=True)],
    "stream ends mid-tensor": [TensorChunk(tensor_id="bad", header=header(), data=b"\0" * 4)],
}
EXPECTED = {
    "first chunk without header": "no header",
    "unknown dtype": "unknown dtype 'float128'",
    "negative dimension": "negative dimension",
    "nbytes mismatch": "nbytes 12",
    "chunk out of order": "out of order",
    "chunk duplicated": "duplicated",
    "chunk missing (last too early)": "data missing",
    "more data than nbytes": "more data than its nbytes",
    "stream ends mid-tensor": "ended mid-tensor",
}


async def raw_call(port: int, method: str, chunks: list[TensorChunk]) -> list:
    """Send hand-made chunks with a bare grpclib channel; return the replies or raise GRPCError."""
    channel = TunedChannel("127.0.0.1", port)
    try:
        reply_type = SendTensorsResponse if method == "SendTensors" else TensorChunk
        cardinality = Cardinality.STREAM_UNARY if method == "SendTensors" else Cardinality.STREAM_STREAM
        async with channel.request(f"/skytorch.v1.TensorService/{method}", cardinality, TensorChunk,
                                   reply_type) as stream:
            for chunk in chunks:
                await stream.send_message(chunk)
            await stream.end()
            return [reply async for reply in stream]
    finally:
        channel.close()


async def good_call_works(port: int) -> None:
    async with TensorClient("127.0.0.1", port) as client:
        out = await client.stream_tensors(torch.arange(6.0).reshape(2, 3))
        assert torch.equal(out[0], torch.arange(6.0).reshape(2, 3))
        assert (await client.send_tensors(torch.ones(2))).success


@pytest.mark.parametrize("method", ["SendTensors", "StreamTensors"])
@pytest.mark.parametrize("case", list(BAD_STREAMS))
async def test_bad_input_gets_invalid_argument_naming_tensor_and_problem(tensor_server, method: str, case: str) -> None:
    with pytest.raises(GRPCError) as info:
        await raw_call(tensor_server.port, method, BAD_STREAMS[case])
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "'bad'" in info.value.message and EXPECTED[case] in info.value.message
    assert len(tensor_server.service.store) == 0
    await good_call_works(tensor_server.port)


@pytest.mark.parametrize("method", ["SendTensors", "StreamTensors"])
async def test_oversized_declaration_is_refused_before_allocation(tensor_server_factory, method: str) -> None:
    server = await tensor_server_factory(max_tensor_bytes=MiB)
    # 4 TiB declared: allocating it would fail or exhaust memory, so this passing shows the check came first.
    chunks = [TensorChunk(tensor_id="huge", header=header(shape=[1 << 40]), data=b"\0" * 16)]
    with pytest.raises(GRPCError) as info:
        await raw_call(server.port, method, chunks)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert "'huge'" in info.value.message and "--max-tensor-bytes" in info.value.message
    await good_call_works(server.port)


async def test_store_counts_a_replaced_id_once_and_forgets_a_popped_one(tensor_server_factory) -> None:
    server = await tensor_server_factory()
    store = server.service.store
    async with TensorClient("127.0.0.1", server.port) as client:
        await client.send_tensors(torch.ones(10), torch.ones(3, dtype=torch.int64), ids=["a", "b"])
        assert store.used_bytes == 40 + 24
        await client.send_tensors(torch.ones(100), ids=["a"])  # replaces "a", keeps its place
        assert store.used_bytes == 400 + 24 and store.ids() == ["a", "b"]
        await client.receive_tensors(parameters={"ids": "a", "pop": "true"})
        assert store.used_bytes == 24 and store.ids() == ["b"]


async def test_store_bound_is_all_or_nothing(tensor_server_factory) -> None:
    server = await tensor_server_factory(max_store_bytes=MiB)
    part = torch.ones(100_000)  # 400 kB
    async with TensorClient("127.0.0.1", server.port) as client:
        with pytest.raises(TensorRejectedError, match="store limit") as info:
            await client.send_tensors(part, part, part, ids=["a", "b", "c"])
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert len(server.service.store) == 0 and server.service.store.used_bytes == 0
        assert (await client.send_tensors(part, part, ids=["a", "b"])).tensor_ids == ["a", "b"]
        with pytest.raises(TensorRejectedError, match="'c'"):
            await client.send_tensors(part, ids=["c"])
        await client.receive_tensors(parameters={"ids": "a", "pop": "true"})
        assert (await client.send_tensors(part, ids=["c"])).success


async def test_receive_parameters_are_validated(tensor_client: TensorClient) -> None:
    cases = {
        (("shape", "a,b"),): "not a comma-separated list",
        (("shape", "-3"),): "negative",
        (("dtype", "float99"),): "unknown dtype 'float99'",
        (("fill", "rand"),): "unknown fill 'rand'",
        (("pop", "true"),): "only with 'ids'",
    }
    for params, match in cases.items():
        with pytest.raises(TensorRejectedError, match=match) as info:
            await tensor_client.receive_tensors(count=1, parameters=dict(params))
        assert info.value.status is Status.INVALID_ARGUMENT
    assert len(await tensor_client.receive_tensors(count=1)) == 1


def test_settings_from_flags_env_and_seed_variables() -> None:
    s = parse_settings([], env={})
    assert (s.host, s.port, s.chunk_size, s.log_level) == (None, 50051, 2 * MiB, "INFO")
    env = {"SKYTORCH_PORT": "6000", "LOG_LEVEL": "debug", "CHUNK_SIZE": "1MiB", "SKYTORCH_MAX_STORE_BYTES": "2GiB",
           "SKYTORCH_HANDLER": "tests.plugins.transport:double", "SKYTORCH_GRACE_PERIOD": "3.5"}
    s = parse_settings([], env=env)
    assert (s.port, s.log_level, s.chunk_size, s.max_store_bytes, s.handler, s.grace_period) == (
        6000, "DEBUG", MiB, 2 << 30, "tests.plugins.transport:double", 3.5)
    s = parse_settings(["--port", "0", "--chunk-size", "4194304", "--max-tensor-bytes", "0"], env=env)
    assert (s.port, s.chunk_size, s.max_tensor_bytes) == (0, 4 * MiB, None)
    assert parse_settings(["--chunk-size", "2MiB"], env={"SKYTORCH_CHUNK_SIZE": "1MiB", "CHUNK_SIZE": "3MiB"}).chunk_size == 2 * MiB
    assert parse_settings([], env={"SKYTORCH_CHUNK_SIZE": "1MiB", "CHUNK_SIZE": "3MiB"}).chunk_size == MiB


@pytest.mark.parametrize(("argv", "env", "match"), [
    (["--chunk-size", "12"], {}, "chunk size 12 is out of range"),
    (["--max-store-bytes", "lots"], {}, "max-store-bytes"),
    ([], {"SKYTORCH_LOG_LEVEL": "LOUD"}, "SKYTORCH_LOG_LEVEL"),
])
def test_bad_settings_exit_with_a_clear_message(argv, env, match, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv, env=env)
    assert match in capsys.readouterr().err


async def test_health_not_serving_while_draining(tensor_server_factory) -> None:
    server = await tensor_server_factory()
    async with TensorClient("127.0.0.1", server.port) as client:
        assert await client.health()
        server._status.set(False)  # what stop() does first
        assert await client.health() is False


def test_server_process_port_zero_ready_file_handler_and_logs(server_process) -> None:
    proc = server_process("--handler", "tests.plugins.transport:double", "--log-level", "INFO")

    async def check() -> None:
        async with TensorClient("127.0.0.1", proc.port) as client:
            assert await client.health()
            out = await client.stream_tensors(torch.full((3,), 2.0))
            assert torch.equal(out[0], torch.full((3,), 4.0))

    asyncio.run(check())
    assert "listening on 127.0.0.1" in proc.stderr()
    proc.stop()
    assert proc.proc.returncode == 0


def test_bad_handler_exits_1_naming_it(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skytorch.server", "--port", "0", "--handler", "no_such_module:fn"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    assert "no_such_module" in result.stderr


def test_sigterm_drains_in_flight_calls_then_exits_0(server_process, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "handler-started"
    proc = server_process("--handler", "tests.plugins.transport:slow", "--grace-period", "30",
                          env={"SKYTORCH_TEST_STARTED": str(marker), "SKYTORCH_TEST_SLEEP": "2"})

    async def scenario() -> None:
        async with TensorClient("127.0.0.1", proc.port) as client, TensorClient("127.0.0.1", proc.port) as other:
            call = asyncio.create_task(client.stream_tensors(torch.arange(10.0)))
            while not marker.exists():
                assert not call.done(), call
                await asyncio.sleep(0.02)
            proc.proc.send_signal(signal.SIGTERM)
            # Health turns NOT_SERVING and new calls are refused while the slow call drains.
            while await other.health():
                await asyncio.sleep(0.02)
            with pytest.raises(ServerUnavailableError, match="shutting down"):
                await other.send_tensors(torch.ones(1))
            result = await asyncio.wait_for(call, 60)
            assert torch.equal(result[0], torch.arange(10.0))

    asyncio.run(scenario())
    assert proc.proc.wait(30) == 0
    assert "draining 1 in-flight call" in proc.stderr()
