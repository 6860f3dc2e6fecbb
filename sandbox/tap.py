"""A tap interface made inside another network namespace, handed to QEMU as an open file.

The vm tier's QEMU must run in the controller's namespace (its user-mode port forward listens
on the controller's 127.0.0.1), but its lab NIC belongs on the bridge in the lab's switch
namespace. A tap is bound to the namespace of the process that opens `/dev/net/tun`, so this
thread enters the switch namespace just for the open, comes back, and QEMU gets the descriptor
(`-netdev tap,fd=N`). The tap never exists in the controller's namespace, and it disappears by
itself when the last descriptor (QEMU's) is closed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from sandbox.errors import LabError

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
#: QEMU's virtio-net offers checksum/segmentation offloads only over a tap with vnet headers.
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tap(netns: str, ifname: str) -> int:
    """Create tap `ifname` in namespace `netns`; return its descriptor (inheritable is up to the caller)."""
    if len(ifname.encode()) >= IFNAMSIZ:
        raise LabError(f"interface name {ifname!r} is too long")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except FileNotFoundError:
            raise LabError(f"network namespace {netns} does not exist") from None
        try:
            _setns(target)
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
                except OSError as e:
                    os.close(fd)
                    raise LabError(f"cannot create tap {ifname} in {netns}: {e}") from None
            finally:
                # Never leave this thread in the lab's namespace.
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    return fd
