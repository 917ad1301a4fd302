"""SkyTorch tensor transport: wire codec, TensorClient and the server's TensorService.

Public API::

    from skytorch.transport import TensorClient
    async with TensorClient("127.0.0.1", 50051) as client:
        reply = await client.send_tensors(torch.randn(3, 3))   # .success .message .tensor_ids
        tensors = await client.receive_tensors(count=2, parameters={"shape": "20,20"})
        results = await client.stream_tensors(torch.ones(4))
        ok = await client.health()

The wire contract is ``proto/skytorch/v1/tensor.proto``; tensors travel as raw
little-endian bytes plus a header, never pickled.
"""

from skytorch.transport._proto.skytorch.v1 import (
    ReceiveTensorsRequest,
    SendTensorsResponse,
    TensorChunk,
    TensorHeader,
)
from skytorch.transport.client import Progress, TensorClient
from skytorch.transport.codec import DEFAULT_CHUNK_SIZE, DTYPES
from skytorch.transport.service import TensorHandler, TensorService

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DTYPES",
    "Progress",
    "ReceiveTensorsRequest",
    "SendTensorsResponse",
    "TensorChunk",
    "TensorClient",
    "TensorHandler",
    "TensorHeader",
    "TensorService",
]
