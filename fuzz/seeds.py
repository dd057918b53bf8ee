#!/usr/bin/env python3
"""Writes the committed seed corpora: fuzz/corpus/<target>/seed-<name>.

The seeds are the inputs of the unit tests (RFC 6455 section 5.7 frames, the handshakes of the
handshake module's tests, RFC 7692 section 7.2.3 compressed samples), in each target's input
layout. libFuzzer's own finds land in the same folders under hash names and are git-ignored.
Run it again after changing a target's input layout: `python3 fuzz/seeds.py`.
"""
import os
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


KEY = bytes([0x37, 0xFA, 0x21, 0x3D])  # RFC 6455 section 5.7's masking key


def mask(payload, key=KEY):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode, payload, fin=True, masked=False, rsv1=False):
    """One frame with the minimal length form (RFC 6455 section 5.2)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n <= 125:
        head = bytes([b0, n])
    elif n <= 0xFFFF:
        head = bytes([b0, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 127]) + n.to_bytes(8, "big")
    if masked:
        return bytes([head[0], head[1] | 0x80]) + head[2:] + KEY + mask(payload)
    return head + payload


def deflate(payload, wbits=15):
    """Raw DEFLATE with a sync flush, tail stripped (RFC 7692 section 7.2.1)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


HELLO = b"Hello"
CLOSE_1000 = (1000).to_bytes(2, "big") + b"bye"

# ---- frame_decode: RFC 6455 section 5.7 examples (padded to 15 bytes for the round trip)
rfc_frames = {
    "text-unmasked": bytes.fromhex("810548656c6c6f"),
    "text-masked": bytes.fromhex("818537fa213d7f9f4d5158"),
    "fragment-1": bytes.fromhex("010348656c"),
    "fragment-2": bytes.fromhex("80026c6f"),
    "ping": bytes.fromhex("890548656c6c6f"),
    "pong-masked": bytes.fromhex("8a8537fa213d7f9f4d5158"),
    "binary-256": bytes.fromhex("827e0100") + bytes(11),
    "binary-64k": bytes.fromhex("827f0000000000010000") + bytes(5),
    "close-masked": frame(0x8, CLOSE_1000, masked=True),
}
for name, data in rfc_frames.items():
    write("frame_decode", name, data + bytes(max(0, 15 - len(data))))

# ---- server_handshake: requests of the handshake module's tests
RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
write("server_handshake", "rfc-1.3", RFC_REQUEST)
write(
    "server_handshake",
    "deflate-offers",
    RFC_REQUEST[:-2]
    + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; "
    b"server_max_window_bits=10, permessage-deflate\r\n\r\n",
)
write(
    "server_handshake",
    "keep-alive-and-frame",
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x00",
)
write("server_handshake", "post", RFC_REQUEST.replace(b"GET", b"POST", 1))
write("server_handshake", "version-8", RFC_REQUEST.replace(b"Version: 13", b"Version: 8"))

# ---- client_handshake: responses to the fixed request (key "the sample nonce")
RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
write("client_handshake", "rfc-1.3", RFC_RESPONSE)
write(
    "client_handshake",
    "protocol-and-deflate",
    RFC_RESPONSE[:-2]
    + b"Sec-WebSocket-Protocol: chat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
    b"client_max_window_bits=10\r\n\r\n",
)
write("client_handshake", "frame-after-head", RFC_RESPONSE + b"\x81\x05Hello")
write("client_handshake", "not-found", b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!")
write(
    "client_handshake",
    "wrong-accept",
    RFC_RESPONSE.replace(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", b"dGhlIHNhbXBsZSBub25jZQ=="),
)

# ---- inflate: [setup: window bits - 8 | 8 no context][limit byte][split byte][compressed]
rfc_7_2_3 = {
    "7.2.3.1-hello": bytes.fromhex("f248cdc9c90700"),
    "7.2.3.2-context-takeover": bytes.fromhex("f248cdc9c90700") + bytes.fromhex("f200110000"),
    "7.2.3.3-stored": bytes.fromhex("000500faff48656c6c6f00"),
    "7.2.3.4-bfinal": bytes.fromhex("f348cdc9c9070000"),
    "7.2.3.5-two-blocks": bytes.fromhex("f248050000ffffcac9c90700"),
    "7.2.3.6-empty": bytes.fromhex("00"),
}
for name, data in rfc_7_2_3.items():
    write("inflate", name, bytes([0x07, 0x10, 0]) + data)
write("inflate", "7.2.3.1-hello-split", bytes([0x0F, 0x10, 3]) + rfc_7_2_3["7.2.3.1-hello"])
write("inflate", "bomb", bytes([0x07, 0x04, 0]) + deflate(bytes(100_000)))
write("inflate", "window-9", bytes([0x01, 0xFF, 40]) + deflate(b"abcdefgh" * 300, 9))


# ---- connection_server / connection_client:
#      [setup: 1 deflate | 2 streaming | 4 small limits | 8 close after echo | 16 prepared echo]
#      [split][peer bytes]
def conversation(masked, deflated=False):
    text = frame(0x1, HELLO, masked=masked)
    if deflated:
        text = frame(0x1, bytes.fromhex("f248cdc9c90700"), masked=masked, rsv1=True)
    return (
        text
        + frame(0x9, HELLO, masked=masked)
        + frame(0x1, b"Hel", fin=False, masked=masked)
        + frame(0xA, b"", masked=masked)
        + frame(0x0, b"lo", masked=masked)
        + frame(0x2, bytes(range(256)) * 2, masked=masked)
        + frame(0x8, CLOSE_1000, masked=masked)
    )


for target, masked in (("connection_server", True), ("connection_client", False)):
    # split byte 0xFC: deflate windows 15/15 with context takeover; pieces up to 252 bytes
    write(target, "rfc-5.7-whole", bytes([0x00, 0x00]) + conversation(masked))
    write(target, "rfc-5.7-pieces", bytes([0x00, 0x03]) + conversation(masked))
    write(target, "deflate", bytes([0x01, 0xFC]) + conversation(masked, deflated=True))
    write(target, "streaming", bytes([0x02, 0x05]) + conversation(masked))
    write(target, "small-limits", bytes([0x04, 0x00]) + conversation(masked))
    write(target, "close-first", bytes([0x08, 0x00]) + conversation(masked))
    write(target, "wrong-mask", bytes([0x00, 0x00]) + conversation(not masked))
    # split byte 0xFD: server_no_context_takeover, so a server sends the prepared compressed frame
    write(target, "prepared", bytes([0x10, 0x00]) + conversation(masked))
    write(target, "prepared-deflate", bytes([0x11, 0xFD]) + conversation(masked, deflated=True))
    write(
        target,
        "deflate-no-context",
        bytes([0x01, 0xFF])
        + frame(0x1, deflate(HELLO * 20), masked=masked, rsv1=True)
        + frame(0x1, deflate(HELLO * 20), masked=masked, rsv1=True),
    )

# ---- the hub's targets (hub_command, hub_http_head): inputs only, the targets come with the hub
for name, command in {
    "subscribe": b'{"op":"subscribe","id":1,"channel":"chat"}',
    "subscribe-since": b'{"op":"subscribe","id":2,"channel":"chat","since":{"epoch":"e1","offset":3}}',
    "publish": b'{"op":"publish","id":3,"channel":"chat","data":{"t":"hi"}}',
    "presence": b'{"op":"presence","id":4,"channel":"chat"}',
    "unsubscribe": b'{"op":"unsubscribe","channel":"chat"}',
    "ping": b'{"op":"ping","id":"p"}',
    "unknown": b'{"op":"nope"}',
}.items():
    write("hub_command", name, command)
for name, head in {
    "upgrade": RFC_REQUEST,
    "publish": b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n",
    "history": b"GET /api/history?channel=k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
}.items():
    write("hub_http_head", name, head)

# ---- extended_connect: the requests of the extended CONNECT unit tests (connect/tests.rs),
# in the target's layout: method, version, URI, :protocol ("-": none), then headers
H2_CONNECT_HEADERS = (
    b"sec-websocket-version: 13\n"
    b"sec-websocket-protocol: chat, superchat\n"
    b"sec-websocket-extensions: permessage-deflate; client_max_window_bits\n"
    b"origin: http://example.com\n"
)


def connect(method=b"CONNECT", version=b"2", uri=b"http://example.com/chat", protocol=b"websocket",
            headers=H2_CONNECT_HEADERS):
    return b"\n".join([method, version, uri, protocol]) + b"\n" + headers


for name, data in {
    "valid": connect(),
    "mixed-case-protocol": connect(protocol=b"WebSocket"),
    "no-protocol": connect(protocol=b"-"),
    "connect-udp": connect(protocol=b"connect-udp"),
    "get": connect(method=b"GET"),
    "http11": connect(version=b"1.1"),
    "version-8": connect(headers=H2_CONNECT_HEADERS.replace(b"version: 13", b"version: 8")),
    "no-authority": connect(uri=b"/chat"),
    "no-extensions": connect(headers=b"sec-websocket-version: 13\n"),
}.items():
    write("extended_connect", name, data)
