"""`sandbox up` keeps a live target that is only slow to greet, and remakes a dead one at once.

A VM on a software CPU at load took longer than 2 s to send its SSH greeting; `up` took it for dead
and destroyed it (a remake costs minutes). Real sockets on the loopback stand in for the forward."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

from sandbox import lab
from sandbox.target import Target


def _slow_greeter(delay: float) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                time.sleep(delay)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 slow\r\n")
                time.sleep(0.2)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def _target(port: int, pid: int) -> Target:
    return Target(name="keep-1", prefix="keep", index=1, tier="nspawn", ssh_port=port, netns="none",
                  lab_v4="", lab_v6="", pids={"supervisor": pid})


def test_a_live_target_that_greets_after_a_few_seconds_is_kept():
    port, server = _slow_greeter(3.0)
    assert lab._still_running(_target(port, os.getpid()))
    server.join(5)


def test_a_target_whose_main_process_is_gone_is_remade_without_waiting_for_a_greeting():
    gone = subprocess.Popen(["true"])
    gone.wait()
    with socket.socket() as listener:   # a port that would accept and never greet
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        assert not lab._still_running(_target(listener.getsockname()[1], gone.pid))
        listener.setblocking(False)
        try:
            listener.accept()
            asked = True
        except BlockingIOError:
            asked = False
    assert not asked, "a dead target's port was still asked for a greeting"
