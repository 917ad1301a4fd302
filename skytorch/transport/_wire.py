"""Fast paths under grpclib: a tensor-aware codec and a tuned HTTP/2 connection.

Three levers, each measured by ``benchmarks/bench_transport.py``:

* :class:`TensorCodec` encodes and decodes ``TensorChunk`` by hand (the same
  protobuf wire format betterproto writes), so a chunk's ``data`` goes from the
  tensor's memory into the frame with one copy, and on receipt stays a
  ``memoryview`` into the received message until it is written into the
  destination tensor. Every other message goes through its own
  ``SerializeToString``/``FromString`` (betterproto and grpclib's health
  protobufs both have them).
* :class:`TunedChannel` / :class:`TunedServer` advertise a larger HTTP/2
  ``SETTINGS_MAX_FRAME_SIZE`` (1 MiB instead of 16 KiB) and larger flow-control
  windows, cutting the per-frame Python work of h2 by ~64x.
* h2 logs ``repr(frame)`` for every received frame even with logging off, and
  hyperframe's ``DataFrame`` repr serializes and hexlifies its whole payload
  only to keep 20 hex digits. :func:`_install_cheap_frame_repr` gives
  ``DataFrame`` a ``_body_repr`` producing the same text from the first bytes.
"""

from __future__ import annotations

import logging
from typing import Any

import binascii

from grpclib.client import Channel, Handler as _ClientHandler
from grpclib.config import Configuration
from grpclib.encoding.proto import ProtoCodec
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from h2.settings import SettingCodes
from hyperframe import frame as _hf

from skytorch.transport._proto.skytorch.v1 import TensorChunk, TensorHeader

logger = logging.getLogger(__name__)

#: HTTP/2 max frame size we advertise (the peer may send frames up to this size).
MAX_FRAME_SIZE = 1 << 20
#: Flow-control windows (per connection and per stream): bytes in flight before an ack.
WINDOW_SIZE = 32 << 20


def tuned_configuration() -> Configuration:
    """grpclib Configuration with the large flow-control windows SkyTorch uses."""
    return Configuration(http2_connection_window_size=WINDOW_SIZE, http2_stream_window_size=WINDOW_SIZE)


# --------------------------------------------------------------------------- codec


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_chunk(chunk: TensorChunk) -> bytes:
    """Protobuf-encode a TensorChunk; ``data`` may be any bytes-like (copied once, here)."""
    parts: list[Any] = []
    if chunk.tensor_id:
        tid = chunk.tensor_id.encode()
        parts += (b"\x0a", _varint(len(tid)), tid)
    if chunk.chunk_index:
        parts += (b"\x10", _varint(chunk.chunk_index))
    header = chunk.header
    if header is not None:
        hb = bytes(header)
        parts += (b"\x1a", _varint(len(hb)), hb)
    data = chunk.data
    if len(data):
        parts += (b"\x22", _varint(len(data) if not isinstance(data, memoryview) else data.nbytes), data)
    if chunk.last:
        parts.append(b"\x28\x01")
    return b"".join(parts)


def decode_chunk(raw: bytes | memoryview) -> TensorChunk:
    """Decode a TensorChunk; ``data`` is a memoryview into ``raw`` (no copy). Unknown fields are skipped."""
    buf = memoryview(raw)
    pos = 0
    end = len(buf)
    tensor_id = ""
    chunk_index = 0
    header: TensorHeader | None = None
    data: memoryview | bytes = b""
    last = False
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            if number == 2:
                chunk_index = value & 0xFFFFFFFF
            elif number == 5:
                last = bool(value)
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            field = buf[pos:pos + length]
            pos += length
            if number == 1:
                tensor_id = bytes(field).decode()
            elif number == 3:
                header = TensorHeader().parse(bytes(field))
            elif number == 4:
                data = field
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != end:
        raise ValueError("truncated message")
    chunk = TensorChunk(tensor_id=tensor_id, chunk_index=chunk_index, last=last)
    chunk.header = header  # type: ignore[assignment]
    chunk.data = data  # type: ignore[assignment]
    return chunk


class TensorCodec(ProtoCodec):
    """grpclib codec: hand-written TensorChunk encoding, the message's own protobuf for the rest."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        """Encode ``message`` (a ``message_type``) to protobuf bytes."""
        if message_type is TensorChunk:
            return encode_chunk(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        """Decode protobuf bytes into a ``message_type``."""
        if message_type is TensorChunk:
            return decode_chunk(data)
        return message_type.FromString(data)


# --------------------------------------------------------------------------- HTTP/2 tuning


class _TunedH2Protocol(H2Protocol):
    """grpclib's H2Protocol that also advertises a larger SETTINGS_MAX_FRAME_SIZE."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.connection._connection.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE})
        self.connection.flush()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                except OSError:  # pragma: no cover - a kernel that refuses keeps its default
                    pass
        # asyncio reads at most 256 KiB per recv(); a 1 MiB read means fewer, larger h2 feeds.
        if hasattr(transport, "max_size"):
            transport.max_size = MAX_FRAME_SIZE + 9


class TunedChannel(Channel):
    """A grpclib Channel with SkyTorch's codec, windows and frame size."""

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        kwargs.setdefault("codec", TensorCodec())
        kwargs.setdefault("config", tuned_configuration())
        super().__init__(host, port, **kwargs)

    def _protocol_factory(self) -> H2Protocol:
        return _TunedH2Protocol(_ClientHandler(), self._config, self._h2_config)


class TunedServer(Server):
    """A grpclib Server with SkyTorch's codec, windows and frame size."""

    def __init__(self, handlers: Any, **kwargs: Any) -> None:
        kwargs.setdefault("codec", TensorCodec())
        kwargs.setdefault("config", tuned_configuration())
        super().__init__(handlers, **kwargs)

    def _protocol_factory(self) -> H2Protocol:
        proto = super()._protocol_factory()
        return _TunedH2Protocol(proto.handler, proto.config, proto.h2_config)


# --------------------------------------------------------------------------- h2 repr


def _cheap_data_body_repr(self: Any) -> str:
    # Same text as hyperframe's Frame._body_repr (first 20 hex digits of the
    # serialized body, then "..."), without serializing and hexlifying it all.
    head = self.serialize_padding_data() + bytes(memoryview(self.data)[:11])
    if not head:
        return "None"
    r = binascii.hexlify(head).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def _install_cheap_frame_repr() -> None:
    if "_body_repr" not in _hf.DataFrame.__dict__:
        _hf.DataFrame._body_repr = _cheap_data_body_repr  # type: ignore[method-assign]


_install_cheap_frame_repr()
