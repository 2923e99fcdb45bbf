"""A thin ctypes binding to Linux ``recvmmsg(2)`` / ``sendmmsg(2)``: many UDP datagrams per system call.

:class:`Ring` holds preallocated, reused arrays for ``slots`` datagrams: ``mmsghdr`` headers,
``iovec`` entries, ``sockaddr`` slots and data buffers, for receiving and for sending. The hot
loop (in :mod:`services.edge.server`) reads and writes them through memoryviews, which costs a
few tens of nanoseconds per field, not a ctypes attribute access. Datagram ``i`` of a received
batch is ``recv_data[i * SLOT : i * SLOT + recv_len[i * HDR_WORDS32 + LEN_WORD]]``; its sender is
``sockaddr`` slot ``i``, which the send headers point at (so a reply goes back where the query
came from without converting the address).

Replies to the same sender (address and port) of the same size can go as one message with
``UDP_SEGMENT`` (Linux UDP GSO, 4.18 and later): the kernel routes and hands down one buffer and cuts
it into datagrams at the device, so the client receives every reply as a datagram of its own, as
before. :meth:`Ring.pack` lays such groups out over the send headers; :meth:`Ring.unpack` puts the
headers back to one reply each (lazily: only before a batch that is sent unpacked).
:func:`gso_supported` tells whether a socket's kernel has it.

:func:`load` returns None where this cannot work (not Linux, no libc, an unexpected ABI): the
caller keeps the asyncio datagram path then.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import sys
from collections.abc import Iterable
from typing import Any

SLOT = 4096  # bytes per datagram buffer (queries are rarely above 512, our replies at most 1232 over UDP)
MSG_DONTWAIT = 0x40  # Linux
_LOADED: list[Any] = []  # [libc functions] once tried (empty list inside: unavailable)


class Iovec(ctypes.Structure):
    """``struct iovec``."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    """``struct msghdr``."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    """``struct mmsghdr``."""

    _fields_ = (("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint32))


_PTR = ctypes.sizeof(ctypes.c_void_p)
_HDR = ctypes.sizeof(Mmsghdr)
_IOV = ctypes.sizeof(Iovec)
# Word indexes into the header and iovec arrays, seen as unsigned 32-bit and as pointer-sized words.
HDR_WORDS32 = _HDR // 4
LEN_WORD = Mmsghdr.msg_len.offset // 4
_HDR_PTRS = _HDR // _PTR
_NAME_PTR = Msghdr.msg_name.offset // _PTR
_IOV_PTRS = _IOV // _PTR
_IOVLEN_PTR = Iovec.iov_len.offset // _PTR
_ABI_OK = (
    sys.platform.startswith("linux")
    and ctypes.sizeof(ctypes.c_size_t) == _PTR
    and _HDR % _PTR == 0
    and _IOV % _PTR == 0
    and Msghdr.msg_name.offset % _PTR == 0
    and Iovec.iov_len.offset % _PTR == 0
    and Iovec.iov_base.offset == 0
    and Msghdr.msg_iov.offset % _PTR == 0
    and Msghdr.msg_iovlen.offset % _PTR == 0
    and Msghdr.msg_control.offset % _PTR == 0
    and Msghdr.msg_controllen.offset % _PTR == 0
)
SOCKADDR_IN = 16
SOCKADDR_IN6 = 28
NAME_STRIDE: dict[int, int] = {socket.AF_INET: 16, socket.AF_INET6: 32}  # bytes per sockaddr slot (8-aligned)
UDP_SEGMENT = 103  # Linux <linux/udp.h>: the segment size of a UDP GSO send (a cmsg at level SOL_UDP)
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS (64 before 6.9, 128 since): datagrams per message
GSO_MAX_BYTES = 60000  # payload of one message (an IP packet's length field bounds it at 65,507)
GSO_MAX_SIZE = 1232  # largest reply sent segmented: fits any path MTU down to IPv6's minimum of 1280
_CMSG_SPACE = socket.CMSG_SPACE(2) if hasattr(socket, "CMSG_SPACE") else 24
_CMSG_LEN = socket.CMSG_LEN(2) if hasattr(socket, "CMSG_LEN") else 18
# Header fields that pack/unpack rewrite, as pointer-sized word indexes within one header.
_IOV_PTR = Msghdr.msg_iov.offset // _PTR
_HDR_IOVLEN_PTR = Msghdr.msg_iovlen.offset // _PTR
_CONTROL_PTR = Msghdr.msg_control.offset // _PTR
_CONTROLLEN_PTR = Msghdr.msg_controllen.offset // _PTR


def load() -> tuple[Any, Any] | None:
    """``(recvmmsg, sendmmsg)`` from libc, or None where they cannot be used (tried once)."""
    if not _LOADED:
        funcs: list[Any] = []
        if _ABI_OK:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                recv, send = libc.recvmmsg, libc.sendmmsg
            except (OSError, AttributeError):
                pass
            else:
                recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
                recv.restype = ctypes.c_int
                send.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
                send.restype = ctypes.c_int
                funcs = [recv, send]
        _LOADED.append(funcs)
    funcs = _LOADED[0]
    return (funcs[0], funcs[1]) if funcs else None


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel under ``sock`` (a UDP socket) knows ``UDP_SEGMENT``."""
    try:
        sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return _ABI_OK


class Ring:
    """Preallocated receive and send arrays for ``slots`` datagrams on one socket of ``family``."""

    def __init__(self, family: int, slots: int = 64) -> None:
        funcs = load()
        if funcs is None or family not in NAME_STRIDE:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg unavailable")
        self._recvmmsg, self._sendmmsg = funcs
        self.family, self.slots = family, slots
        self.name_stride = stride = NAME_STRIDE[family]
        self.namelen = SOCKADDR_IN if family == socket.AF_INET else SOCKADDR_IN6
        # Plain bytearrays own the memory: slicing one gives bytes-like copies at C speed.
        self.recv_data = bytearray(slots * SLOT)
        self.send_data = bytearray(slots * SLOT)
        self.names = bytearray(slots * stride)
        self._recv_hdrs = (Mmsghdr * slots)()
        self._send_hdrs = (Mmsghdr * slots)()
        self._recv_iov = (Iovec * slots)()
        self._send_iov = (Iovec * slots)()
        # ctypes views of the bytearrays: kept, so the arrays cannot be resized (moved) under the kernel.
        self._pins = [(ctypes.c_char * len(b)).from_buffer(b) for b in (self.recv_data, self.send_data, self.names)]
        rbase, sbase, nbase = (ctypes.addressof(pin) for pin in self._pins)
        self.names_base = nbase
        for i in range(slots):
            self._recv_iov[i].iov_base, self._recv_iov[i].iov_len = rbase + i * SLOT, SLOT
            self._send_iov[i].iov_base, self._send_iov[i].iov_len = sbase + i * SLOT, 0
            for hdrs, iov in ((self._recv_hdrs, self._recv_iov), (self._send_hdrs, self._send_iov)):
                h = hdrs[i].msg_hdr
                h.msg_name, h.msg_namelen = nbase + i * stride, self.namelen
                h.msg_iov, h.msg_iovlen = ctypes.addressof(iov[i]), 1
        self._recv_ptr = ctypes.addressof(self._recv_hdrs)
        self._send_ptr = ctypes.addressof(self._send_hdrs)
        # For pack(): iovecs laid out group by group, and one UDP_SEGMENT cmsg per send header.
        self._gso_iov = (Iovec * slots)()
        self._cmsgs = (ctypes.c_char * (slots * _CMSG_SPACE))()
        head = _CMSG_LEN.to_bytes(_PTR, sys.byteorder)
        head += socket.SOL_UDP.to_bytes(4, sys.byteorder) + UDP_SEGMENT.to_bytes(4, sys.byteorder)
        for j in range(slots):
            ctypes.memmove(ctypes.addressof(self._cmsgs) + j * _CMSG_SPACE, head, len(head))
        self._send_iov_base = ctypes.addressof(self._send_iov)
        self._gso_iov_base, self._cmsg_base = ctypes.addressof(self._gso_iov), ctypes.addressof(self._cmsgs)
        self._cmsg_data = len(head)  # CMSG_DATA: the segment size's offset in its cmsg
        self._slot_bases = [sbase + i * SLOT for i in range(slots)]
        self.packed = 0  # send headers 0 .. packed - 1 may still be laid out by pack(): unpack() before a plain send
        # The fields the hot loop touches, as flat word arrays.
        self.recv_words = memoryview(self._recv_hdrs).cast("B").cast("I")  # msg_len, msg_namelen
        self.send_ptrs = memoryview(self._send_hdrs).cast("B").cast("P")  # msg_name of each send header
        self.send_iov_ptrs = memoryview(self._send_iov).cast("B").cast("P")  # iov_len of each
        self.gso_iov_ptrs = memoryview(self._gso_iov).cast("B").cast("P")
        self.cmsg_words = memoryview(self._cmsgs).cast("B").cast("H")
        self.names_q = memoryview(self.names).cast("Q")  # IPv4: word 2i is family, port and address of slot i
        self.recv_view, self.send_view = memoryview(self.recv_data), memoryview(self.send_data)
        # The same data as 16-bit words: word ``i * SLOT // 2`` of slot i is its DNS ID (slots are 2-aligned).
        self.recv_ids, self.send_ids = self.recv_view.cast("H"), self.send_view.cast("H")
        # IPv4: the bits of a names_q word that hold the address (not the family and port).
        self.addr_mask = int.from_bytes(bytes(4) + b"\xff" * 4, sys.byteorder)
        self.names_view = memoryview(self.names)
        # Per receive slot: (i, data offset, index of its msg_len in recv_words, its address key's index in
        # names_q (IPv4) or names_view (IPv6), the address of its sockaddr).
        self.plan = [
            (i, i * SLOT, i * HDR_WORDS32 + LEN_WORD, i * stride // 8 if family == socket.AF_INET else i * stride,
             nbase + i * stride)
            for i in range(slots)
        ]  # fmt: skip
        self.hdr_ptrs = _HDR_PTRS
        self.name_ptr = _NAME_PTR
        self.iov_ptrs = _IOV_PTRS
        self.iovlen_ptr = _IOVLEN_PTR

    def recv(self, fd: int) -> int:
        """Receive up to ``slots`` datagrams without waiting; how many (0: none waiting). OSError on errors."""
        # Each slot's msg_namelen is written back by the kernel, always with this family's size: no reset.
        n = self._recvmmsg(fd, self._recv_ptr, self.slots, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, "recvmmsg: " + _strerror(err))
        return int(n)

    def send(self, fd: int, start: int, count: int) -> int:
        """Send prepared send slots ``start .. count - 1`` without waiting; how many went (OSError if none)."""
        n = self._sendmmsg(fd, self._send_ptr + start * _HDR, count - start, MSG_DONTWAIT)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, "sendmmsg: " + _strerror(err))
        return int(n)

    def probe(self, fd: int) -> None:
        """Raise OSError unless both calls work on ``fd`` (an empty send, a receive of what is waiting: none)."""
        n = self._sendmmsg(fd, self._send_ptr, 0, MSG_DONTWAIT)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, "sendmmsg: " + _strerror(err))
        n = self._recvmmsg(fd, self._recv_ptr, 0, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise OSError(err, "recvmmsg: " + _strerror(err))

    def address(self, i: int) -> tuple[Any, ...]:
        """The sender of receive slot ``i`` as the socket module shows it: ``(host, port)`` or a 4-tuple for IPv6."""
        o = i * self.name_stride
        raw = bytes(self.names[o : o + self.namelen])
        return sockaddr(raw)

    def reset_names(self, count: int) -> None:
        """Point send headers ``0 .. count - 1`` back at their own slot's sender."""
        for k in range(count):
            self.send_ptrs[k * _HDR_PTRS + _NAME_PTR] = self.names_base + k * self.name_stride

    def pack(self, groups: Iterable[list[int]]) -> list[list[int]]:
        """Lay prepared send slots out as messages, each group's slots in as few as the kernel allows.

        Each group is ``[sockaddr address, size, slot, slot, ...]``: replies of ``size`` bytes to that
        sender, in send slots. Send header ``j`` becomes message ``j``: one reply, or up to
        :data:`GSO_MAX_SEGMENTS` of them with ``UDP_SEGMENT`` set to their size. Returns each message's
        slots. The caller points the senders back with :meth:`reset_names` once they are sent; the
        rest of the headers stays laid out (:attr:`packed`) until :meth:`unpack` or the next pack.
        """
        ptrs, iov, cmsg, bases = self.send_ptrs, self.gso_iov_ptrs, self.cmsg_words, self._slot_bases
        iov_base, cmsg_base, data_at, len_at = self._gso_iov_base, self._cmsg_base, self._cmsg_data, _IOVLEN_PTR
        messages: list[list[int]] = []
        at = 0  # next free gso iovec, in words
        h = 0  # this message's first word in the send headers
        for group in groups:
            name, size = group[0], group[1]
            most = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size) if 0 < size <= GSO_MAX_SIZE else 1
            for c in range(2, len(group), most):
                chunk = group[c : c + most]
                ptrs[h + _NAME_PTR] = name
                ptrs[h + _IOV_PTR] = iov_base + at * _PTR
                ptrs[h + _HDR_IOVLEN_PTR] = len(chunk)
                for s in chunk:
                    iov[at] = bases[s]  # iov_base, first in struct iovec
                    iov[at + len_at] = size
                    at += _IOV_PTRS
                if len(chunk) > 1:
                    j = len(messages) * _CMSG_SPACE
                    cmsg[(j + data_at) >> 1] = size
                    ptrs[h + _CONTROL_PTR], ptrs[h + _CONTROLLEN_PTR] = cmsg_base + j, _CMSG_SPACE
                else:
                    ptrs[h + _CONTROL_PTR] = ptrs[h + _CONTROLLEN_PTR] = 0
                messages.append(chunk)
                h += _HDR_PTRS
        if len(messages) > self.packed:
            self.packed = len(messages)
        return messages

    def unpack(self) -> None:
        """Put the send headers that :meth:`pack` laid out back to one reply each (own slot, no cmsg)."""
        ptrs, iov = self.send_ptrs, self._send_iov_base
        count, self.packed = self.packed, 0
        for j in range(count):
            h = j * _HDR_PTRS
            ptrs[h + _IOV_PTR] = iov + j * _IOV
            ptrs[h + _HDR_IOVLEN_PTR] = 1
            ptrs[h + _CONTROL_PTR] = ptrs[h + _CONTROLLEN_PTR] = 0

    def close(self) -> None:
        """Let go of the buffer views (the arrays are freed with the ring)."""
        for view in (
            self.recv_words, self.send_ptrs, self.send_iov_ptrs, self.names_q, self.recv_ids, self.send_ids,
            self.recv_view, self.send_view, self.names_view, self.gso_iov_ptrs, self.cmsg_words,
        ):  # fmt: skip
            view.release()


def sockaddr(raw: bytes) -> tuple[Any, ...]:
    """A raw ``sockaddr_in`` / ``sockaddr_in6`` as the socket module shows it."""
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), port
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    scope = int.from_bytes(raw[24:28], sys.byteorder)
    if scope:
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return host, port, int.from_bytes(raw[4:8], "big"), scope


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)
