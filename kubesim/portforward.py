"""`kubectl port-forward` on a kubesim node: SPDY/3.1 tunnelled in a WebSocket, the portforward.k8s.io protocol.

Since 1.31 kubectl opens pods/portforward as a WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io` and
speaks SPDY/3.1 inside its binary messages (client-go's tunneling dialer); a 1.36 API server hands that WebSocket
to a node that declares `ExtendWebSocketsToKubelet` unchanged (pkg/registry/core/pod/rest/subresources.go), and the
kubelet's TunnelingHandler unwraps it. Here: the SPDY/3.1 frames kubectl's spdystream sends and expects (SYN_STREAM,
SYN_REPLY, DATA, RST_STREAM, PING, GOAWAY; SETTINGS and WINDOW_UPDATE ignored, as spdystream keeps no flow-control
window; header blocks zlib-compressed with the SPDY/3 dictionary, one context per direction), and the
portforward.k8s.io pairing: per forwarded connection an `error` and a `data` stream with the same `requestID` and
`port`; the data stream is joined to the pod's port, a failure is written to the error stream.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import zlib

log = logging.getLogger("kubesim.portforward")

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5
CHUNK = 32768
# The zlib dictionary of SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1).
SPDY3_DICTIONARY = bytes.fromhex(
    "000000076f7074696f6e73000000046865616400000004706f7374000000037075740000000664656c6574650000000574726163"
    "65000000066163636570740000000e6163636570742d636861727365740000000f6163636570742d656e636f64696e670000000f"
    "6163636570742d6c616e67756167650000000d6163636570742d72616e6765730000000361676500000005616c6c6f770000000d"
    "617574686f72697a6174696f6e0000000d63616368652d636f6e74726f6c0000000a636f6e6e656374696f6e0000000c636f6e74"
    "656e742d6261736500000010636f6e74656e742d656e636f64696e6700000010636f6e74656e742d6c616e67756167650000000e"
    "636f6e74656e742d6c656e67746800000010636f6e74656e742d6c6f636174696f6e0000000b636f6e74656e742d6d6435000000"
    "0d636f6e74656e742d72616e67650000000c636f6e74656e742d7479706500000004646174650000000465746167000000066578"
    "7065637400000007657870697265730000000466726f6d00000004686f73740000000869662d6d617463680000001169662d6d6f"
    "6469666965642d73696e63650000000d69662d6e6f6e652d6d617463680000000869662d72616e67650000001369662d756e6d6f"
    "6469666965642d73696e63650000000d6c6173742d6d6f646966696564000000086c6f636174696f6e0000000c6d61782d666f72"
    "776172647300000006707261676d610000001270726f78792d61757468656e7469636174650000001370726f78792d617574686f"
    "72697a6174696f6e0000000572616e676500000007726566657265720000000b72657472792d6166746572000000067365727665"
    "7200000002746500000007747261696c6572000000117472616e736665722d656e636f64696e6700000007757067726164650000"
    "000a757365722d6167656e74000000047661727900000003766961000000077761726e696e67000000107777772d61757468656e"
    "746963617465000000066d6574686f64000000036765740000000673746174757300000006323030204f4b000000077665727369"
    "6f6e00000008485454502f312e310000000375726c000000067075626c69630000000a7365742d636f6f6b69650000000a6b6565"
    "702d616c697665000000066f726967696e3130303130313230313230323230353230363330303330323330333330343330353330"
    "36333037343032343035343036343037343038343039343130343131343132343133343134343135343136343137353032353034"
    "353035323033204e6f6e2d417574686f726974617469766520496e666f726d6174696f6e323034204e6f20436f6e74656e743330"
    "31204d6f766564205065726d616e656e746c7934303020426164205265717565737434303120556e617574686f72697a65643430"
    "3320466f7262696464656e343034204e6f7420466f756e6435303020496e7465726e616c20536572766572204572726f72353031"
    "204e6f7420496d706c656d656e746564353033205365727669636520556e617661696c61626c654a616e20466562204d61722041"
    "7072204d6179204a756e204a756c204175672053657074204f6374204e6f76204465632030303a30303a3030204d6f6e2c205475"
    "652c205765642c205468752c204672692c205361742c2053756e2c20474d546368756e6b65642c746578742f68746d6c2c696d61"
    "67652f706e672c696d6167652f6a70672c696d6167652f6769662c6170706c69636174696f6e2f786d6c2c6170706c6963617469"
    "6f6e2f7868746d6c2b786d6c2c746578742f706c61696e2c746578742f6a6176617363726970742c7075626c6963707269766174"
    "656d61782d6167653d677a69702c6465666c6174652c73646368636861727365743d7574662d38636861727365743d69736f2d38"
    "3835392d312c7574662d2c2a2c656e713d302e")


class Tunnel:
    """The byte stream carried by a WebSocket's binary messages: ``recv_message()`` gives the next message's bytes
    (b"" at the end), ``send_message(data)`` sends one."""

    def __init__(self, recv_message, send_message) -> None:
        self._recv, self.send = recv_message, send_message
        self._buffer = bytearray()

    def read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            message = self._recv()
            if not message:
                raise EOFError
            self._buffer += message
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class _Connection:
    """A data stream's connection to the pod: what kubectl sends before it is open waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._early = bytearray()
        self._fin = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self._write(bytes(self._early), self._fin)

    def send(self, data: bytes, fin: bool) -> None:
        with self._lock:
            if self._sock is None:
                self._early += data
                self._fin = self._fin or fin
            else:
                self._write(data, fin)

    def _write(self, data: bytes, fin: bool) -> None:
        try:
            if data:
                self._sock.sendall(data)
            if fin:   # kubectl sends no more: the pod's side may still answer
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()


class PortForwardSession:
    """One port-forward connection: SPDY frames from ``tunnel``; ``dial(port)`` opens a socket to the pod's port
    (OSError when it cannot); ``describe`` names the pod in error messages, as the kubelet does."""

    def __init__(self, tunnel: Tunnel, dial, describe: str) -> None:
        self.tunnel, self.dial, self.describe = tunnel, dial, describe
        self._inflate = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        self._deflate = zlib.compressobj(zdict=SPDY3_DICTIONARY)
        self._send_lock = threading.Lock()
        self._pairs: dict[str, dict[str, int]] = {}      # requestID -> {"error": stream, "data": stream}
        self._ports: dict[str, int] = {}
        self._connections: dict[int, _Connection] = {}    # data stream -> its connection to the pod

    def run(self) -> None:
        try:
            while True:
                head = self.tunnel.read_exact(8)
                length = struct.unpack("!I", head[4:])[0] & 0xFFFFFF
                body = self.tunnel.read_exact(length)
                if head[0] & 0x80:
                    frame_type = struct.unpack("!H", head[2:4])[0]
                    if frame_type == GOAWAY:
                        break
                    self._control(frame_type, head[4], body)
                else:
                    self._data(struct.unpack("!I", head[:4])[0] & 0x7FFFFFFF, head[4], body)
        except (EOFError, OSError):
            pass
        finally:
            for connection in list(self._connections.values()):
                connection.close()

    # ---- frames in ---------------------------------------------------------------------------------
    def _control(self, frame_type: int, flags: int, body: bytes) -> None:
        if frame_type == PING:
            self._send_control(PING, 0, body[:4])
        elif frame_type == SYN_STREAM:
            stream = struct.unpack("!I", body[:4])[0] & 0x7FFFFFFF
            headers = self._headers(body[10:])
            self._send_control(SYN_REPLY, 0, struct.pack("!I", stream) + self._header_block({}))
            self._open(stream, headers)
        elif frame_type == RST_STREAM:
            connection = self._connections.pop(struct.unpack("!I", body[:4])[0] & 0x7FFFFFFF, None)
            if connection is not None:
                connection.close()

    def _data(self, stream: int, flags: int, data: bytes) -> None:
        connection = self._connections.get(stream)
        if connection is not None:
            connection.send(data, fin=bool(flags & FLAG_FIN))

    def _open(self, stream: int, headers: dict[str, str]) -> None:
        """Pair the streams of one forwarded connection (error first, then data, as kubectl creates them)."""
        request_id = headers.get("requestid", str(stream))
        kind = headers.get("streamtype", "")
        pair = self._pairs.setdefault(request_id, {})
        pair[kind] = stream
        try:
            self._ports[request_id] = int(headers.get("port", ""))
        except ValueError:
            self._ports[request_id] = 0
        if "error" in pair and "data" in pair:
            del self._pairs[request_id]
            port = self._ports.pop(request_id)
            self._connections[pair["data"]] = _Connection()   # kubectl may send before the pod's port answers
            threading.Thread(target=self._forward, args=(port, pair["data"], pair["error"]), daemon=True,
                             name=f"kubesim-portforward-{port}").start()

    # ---- a forwarded connection -------------------------------------------------------------------------
    def _forward(self, port: int, data_stream: int, error_stream: int) -> None:
        connection = self._connections[data_stream]
        try:
            if not 0 < port < 65536:
                raise OSError(f"invalid port {port}")
            sock = self.dial(port)
        except OSError as error:
            message = f"error forwarding port {port} to pod {self.describe}: {error}"
            log.info("%s", message)
            self._connections.pop(data_stream, None)
            self._send_data(error_stream, message.encode())
            self._send_data(data_stream, b"", fin=True)
            self._send_data(error_stream, b"", fin=True)
            return
        connection.attach(sock)
        try:
            for chunk in iter(lambda: sock.recv(CHUNK), b""):
                self._send_data(data_stream, chunk)
        except OSError:
            pass
        finally:
            self._connections.pop(data_stream, None)
            connection.close()
            self._send_data(data_stream, b"", fin=True)
            self._send_data(error_stream, b"", fin=True)

    # ---- frames out ----------------------------------------------------------------------------------
    def _send_control(self, frame_type: int, flags: int, body: bytes) -> None:
        self._send(struct.pack("!HHI", 0x8003, frame_type, flags << 24 | len(body)) + body)

    def _send_data(self, stream: int, data: bytes, fin: bool = False) -> None:
        self._send(struct.pack("!II", stream, (FLAG_FIN if fin else 0) << 24 | len(data)) + data)

    def _send(self, frame: bytes) -> None:
        with self._send_lock:
            try:
                self.tunnel.send(frame)
            except OSError:
                pass

    # ---- header blocks --------------------------------------------------------------------------------
    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        count, offset, headers = struct.unpack("!I", raw[:4])[0], 4, {}
        for _ in range(count):
            size = struct.unpack("!I", raw[offset:offset + 4])[0]
            name = raw[offset + 4:offset + 4 + size].decode().lower()
            offset += 4 + size
            size = struct.unpack("!I", raw[offset:offset + 4])[0]
            headers[name] = raw[offset + 4:offset + 4 + size].decode().split("\0")[0]
            offset += 4 + size
        return headers

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack("!I", len(headers)) + b"".join(
            struct.pack("!I", len(k)) + k.encode() + struct.pack("!I", len(v)) + v.encode() for k, v in headers.items())
        # one compression context per connection: only the reading thread (SYN_REPLY) compresses, in frame order
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
