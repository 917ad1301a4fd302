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
* :func:`send_chunk` writes a chunk's DATA frames straight to the socket
  transport: the frame payload is the 5-byte gRPC prefix and the protobuf
  fields, then a ``memoryview`` slice of the tensor itself, with h2's state and
  flow-control accounting updated exactly as ``H2Connection.send_data`` does.
  grpclib's path would copy every byte six times (message concatenation,
  ``BytesIO``, ``memoryview.tobytes``, frame serialization, h2's outgoing
  buffer twice); this one copies none in user space. It relies on grpclib
  0.4's stream internals (pinned ``<0.5``) and falls back to
  ``stream.send_message`` when they are not there.
* :class:`_FastFrameBuffer` replaces h2's incoming frame buffer: received
  socket reads are kept as they are and a DATA frame's payload becomes a
  ``memoryview`` into them, instead of h2's four copies (append to a
  bytearray, slice, ``tobytes``, shift the rest down). Every other frame type
  is parsed by hyperframe exactly as before.
* h2 logs ``repr(frame)`` for every received frame even with logging off, and
  hyperframe's ``DataFrame`` repr serializes and hexlifies its whole payload
  only to keep 20 hex digits. :func:`_install_cheap_frame_repr` gives
  ``DataFrame`` a ``_body_repr`` producing the same text from the first bytes.
"""

from __future__ import annotations

import binascii
import logging
import socket
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import grpclib.client
import grpclib.exceptions
import grpclib.server
from grpclib.client import Channel
from grpclib.client import Handler as _ClientHandler
from grpclib.config import Configuration
from grpclib.encoding.proto import ProtoCodec
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from h2.connection import ConnectionInputs
from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from h2.stream import StreamInputs
from hyperframe import frame as _hf
from hyperframe.exceptions import InvalidDataError, InvalidFrameError

from skytorch.transport._proto.skytorch.v1 import TensorChunk
from skytorch.transport.codec import WireChunk, WireHeader, has_header

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


def _zigzagless_int64(value: int) -> bytes:
    # proto int64: negative values are their 64-bit two's complement as a varint.
    return _varint(value & 0xFFFFFFFFFFFFFFFF)


def encode_header(header: Any) -> bytes:
    """Protobuf-encode a TensorHeader (a WireHeader or the generated class), as betterproto does."""
    parts: list[bytes] = []
    if header.dtype:
        raw = header.dtype.encode()
        parts += (b"\x0a", _varint(len(raw)), raw)
    if header.shape:
        packed = b"".join(_zigzagless_int64(int(dim)) for dim in header.shape)
        parts += (b"\x12", _varint(len(packed)), packed)
    if header.nbytes:
        parts += (b"\x18", _varint(header.nbytes))
    for key, value in header.metadata.items():
        k, v = key.encode(), value.encode()
        entry = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(v)) + v
        parts += (b"\x22", _varint(len(entry)), entry)
    return b"".join(parts)


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values are memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            value = buf[pos:pos + length]
            pos += length
        elif wire_type == 1:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire_type == 5:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated message")
        yield number, wire_type, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_header(raw: memoryview) -> WireHeader:
    """Decode a TensorHeader (packed or unpacked shape, map entries) into a WireHeader."""
    header = WireHeader()
    for number, wire_type, value in _fields(raw):
        if number == 1 and wire_type == 2:
            header.dtype = bytes(value).decode()
        elif number == 2 and wire_type == 2:
            pos = 0
            while pos < len(value):
                dim, pos = _read_varint(value, pos)
                header.shape.append(_int64(dim))
        elif number == 2 and wire_type == 0:
            header.shape.append(_int64(value))
        elif number == 3 and wire_type == 0:
            header.nbytes = value
        elif number == 4 and wire_type == 2:
            key = val = ""
            for n, wt, v in _fields(value):
                if n == 1 and wt == 2:
                    key = bytes(v).decode()
                elif n == 2 and wt == 2:
                    val = bytes(v).decode()
            header.metadata[key] = val
    return header


def encode_chunk(chunk: Any) -> bytes:
    """Protobuf-encode a chunk (WireChunk or TensorChunk); ``data`` may be any bytes-like (copied once, here)."""
    data = chunk.data
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    return b"".join([encode_chunk_head(chunk, size), data])


def encode_chunk_head(chunk: Any, data_len: int) -> bytes:
    """Every field of a chunk but the data bytes: id, index, header, last, then data's tag and length.

    Protobuf parsers accept fields in any order, so ``last`` (5) goes before
    ``data`` (4) and the data can follow as a separate buffer.
    """
    parts: list[bytes] = []
    if chunk.tensor_id:
        tid = chunk.tensor_id.encode()
        parts += (b"\x0a", _varint(len(tid)), tid)
    if chunk.chunk_index:
        parts += (b"\x10", _varint(chunk.chunk_index))
    if has_header(chunk):
        hb = encode_header(chunk.header)
        parts += (b"\x1a", _varint(len(hb)), hb)
    if chunk.last:
        parts.append(b"\x28\x01")
    if data_len:
        parts += (b"\x22", _varint(data_len))
    return b"".join(parts)


def decode_chunk(raw: bytes | memoryview) -> WireChunk:
    """Decode a TensorChunk into a WireChunk; ``data`` is a memoryview into ``raw`` (no copy)."""
    chunk = WireChunk()
    for number, wire_type, value in _fields(memoryview(raw).cast("B")):
        if wire_type == 0:
            if number == 2:
                chunk.chunk_index = value & 0xFFFFFFFF
            elif number == 5:
                chunk.last = bool(value)
        elif wire_type == 2:
            if number == 1:
                chunk.tensor_id = bytes(value).decode()
            elif number == 3:
                chunk.header = decode_header(value)
            elif number == 4:
                chunk.data = value
    return chunk


class TensorCodec(ProtoCodec):
    """grpclib codec: hand-written TensorChunk encoding, the message's own protobuf for the rest."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        """Encode ``message`` (a ``message_type``) to protobuf bytes."""
        if message_type is TensorChunk:
            return encode_chunk(message)  # a WireChunk or a generated TensorChunk
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        """Decode protobuf bytes into a ``message_type``."""
        if message_type is TensorChunk:
            return decode_chunk(data)
        return message_type.FromString(data)


# --------------------------------------------------------------------------- HTTP/2 tuning


class _FastFrameBuffer(FrameBuffer):
    """h2's FrameBuffer without the copies: DATA payloads are memoryviews into the received reads."""

    def __init__(self, connection: Any, server: bool = False) -> None:
        super().__init__(server=server)
        self._connection = connection
        self._views: deque[memoryview] = deque()
        self._size = 0

    def _validate_frame_length(self, length: int) -> None:
        # h2 sets max_frame_size once per read, before the frames in it are processed:
        # a SETTINGS ack raising the limit and a frame using it often share a read.
        self.max_frame_size = self._connection.max_inbound_frame_size
        super()._validate_frame_length(length)

    def add_data(self, data: Any) -> None:
        """Add bytes read from the socket (kept, not copied)."""
        view = memoryview(data).cast("B")
        if self._preamble_len:
            of_which_preamble = min(self._preamble_len, len(view))
            if self._preamble[:of_which_preamble] != view[:of_which_preamble]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            view = view[of_which_preamble:]
            self._preamble_len -= of_which_preamble
            self._preamble = self._preamble[of_which_preamble:]
        if len(view):
            self._views.append(view)
            self._size += len(view)

    def _take(self, size: int) -> memoryview:
        """Remove and return the next ``size`` bytes (a slice when they lie in one read)."""
        if not size:
            return memoryview(b"")
        first = self._views[0]
        self._size -= size
        if len(first) > size:
            self._views[0] = first[size:]
            return first[:size]
        if len(first) == size:
            self._views.popleft()
            return first
        parts = []
        while size:
            view = self._views[0]
            if len(view) <= size:
                parts.append(self._views.popleft())
                size -= len(view)
            else:
                parts.append(view[:size])
                self._views[0] = view[size:]
                size = 0
        return memoryview(b"".join(parts))

    def _peek_header(self) -> bytes:
        first = self._views[0]
        if len(first) >= 9:
            return first[:9].tobytes()
        out = b""
        for view in self._views:
            out += view[:9 - len(out)].tobytes()
            if len(out) == 9:
                break
        return out

    def __next__(self) -> Any:
        while True:
            if self._size < 9:
                raise StopIteration
            try:
                frame, length = _hf.Frame.parse_frame_header(memoryview(self._peek_header()))
            except (InvalidDataError, InvalidFrameError) as err:  # pragma: no cover - as in h2
                raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
            if self._size < length + 9:
                raise StopIteration
            self._validate_frame_length(length)
            self._take(9)
            body = self._take(length)
            if type(frame) is _hf.DataFrame and "PADDED" not in frame.flags:
                frame.data = body
                frame.body_len = length
            else:
                try:
                    frame.parse_body(body)
                except InvalidDataError as err:
                    raise ProtocolError("Received frame with non-compliant data") from err
                except InvalidFrameError as err:
                    raise FrameDataMissingError("Frame data missing or invalid") from err
            new_frame = self._update_header_buffer(frame)
            if new_frame is not None:
                return new_frame


class _TunedH2Protocol(H2Protocol):
    """grpclib's H2Protocol with a larger SETTINGS_MAX_FRAME_SIZE and the copy-free frame buffer."""

    def connection_made(self, transport: Any) -> None:
        """Set up grpclib's connection, then our frame buffer, frame size and socket sizes."""
        super().connection_made(transport)
        h2 = self.connection._connection
        h2.incoming_buffer = _FastFrameBuffer(h2, server=not h2.config.client_side)
        h2.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE})
        self.connection.flush()
        sock = transport.get_extra_info("socket")
        if sock is not None:
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


# --------------------------------------------------------------------------- zero-copy send

#: Chunks with less data than this go through grpclib's ordinary send_message.
FAST_SEND_MIN = 64 << 10


def _fast_stream_ready(stream: Any) -> Any:
    """grpclib's protocol-level stream behind a client/server Stream, or None if the layout is unknown."""
    proto = getattr(stream, "_stream", None)
    if proto is None or getattr(proto, "id", None) is None:
        return None
    if not all(hasattr(proto, name) for name in ("_h2_connection", "_transport", "connection", "window_updated")):
        return None
    return proto


async def send_chunk(stream: Any, chunk: WireChunk | TensorChunk) -> None:
    """Send one TensorChunk on a grpclib client or server stream without copying its data."""
    data = chunk.data
    size = len(data)
    if size < FAST_SEND_MIN:
        await stream.send_message(chunk)
        return
    if isinstance(stream, grpclib.client.Stream):
        if not stream._send_request_done:
            await stream.send_request()
        if stream._end_done:
            raise grpclib.exceptions.ProtocolError("Stream is ended")
    elif isinstance(stream, grpclib.server.Stream):
        if not stream._send_initial_metadata_done:
            await stream.send_initial_metadata()
    else:  # pragma: no cover - an unknown stream type
        await stream.send_message(chunk)
        return
    proto = _fast_stream_ready(stream)
    if proto is None:  # pragma: no cover - a grpclib with another layout
        await stream.send_message(chunk)
        return
    head = encode_chunk_head(chunk, size)
    prefix = b"\x00" + (len(head) + size).to_bytes(4, "big") + head
    buffers: list[Any] = [prefix, data if isinstance(data, memoryview) else memoryview(data)]
    await _send_buffers(proto, buffers, len(prefix) + size)
    stream._send_message_done = True
    stream._messages_sent += 1
    proto.connection.messages_sent += 1
    proto.connection.last_message_sent = time.monotonic()


async def _send_buffers(proto: Any, buffers: list[Any], total: int) -> None:
    """Write ``total`` bytes from ``buffers`` as DATA frames within h2's window and frame limits."""
    h2 = proto._h2_connection
    connection = proto.connection
    stream_id = proto.id
    index = 0
    offset = 0
    while total:
        await connection.write_ready.wait()
        window = h2.local_flow_control_window(stream_id)
        if window <= 0:
            proto.window_updated.clear()
            await proto.window_updated.wait()
            continue
        size = min(window, h2.max_outbound_frame_size, total)
        # Account for the frame exactly as H2Connection.send_data / H2Stream.send_data do.
        h2.state_machine.process_input(ConnectionInputs.SEND_DATA)
        h2_stream = h2.streams[stream_id]
        h2_stream.state_machine.process_input(StreamInputs.SEND_DATA)
        h2_stream.outbound_flow_control_window -= size
        h2.outbound_flow_control_window -= size
        transport = proto._transport
        # Anything h2 queued before (window updates, pings) goes first; then the frame header.
        small = h2.data_to_send() + size.to_bytes(3, "big") + b"\x00\x00" + stream_id.to_bytes(4, "big")
        left = size
        while left:
            buf = buffers[index]
            take = min(len(buf) - offset, left)
            piece = buf[offset:offset + take] if (offset or take != len(buf)) else buf
            if isinstance(piece, bytes) and len(piece) < FAST_SEND_MIN:
                small += piece
            else:
                if small:
                    transport.write(small)
                    small = b""
                transport.write(piece)
            left -= take
            offset += take
            if offset == len(buf):
                index += 1
                offset = 0
        if small:
            transport.write(small)
        total -= size
        proto.data_sent += size
        connection.data_sent += size
        connection.data_send_process()


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
