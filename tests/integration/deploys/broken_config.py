"""A pyinfra deploy that tries to apply a deliberately broken sshd or nftables config through the guard.

Used by test_access.py to prove validation stops a bad config before it goes live. Which one
is chosen by HARDKIT_TEST_BROKEN=ssh|firewall (this file is never part of a real deploy).
"""

import os

from pyinfra import host

from roles import guard
from roles.access_data import ADMIN_USER
from roles.firewall import NFT_CONF
from roles.ssh import SSHD_CONFIG

which = os.environ["HARDKIT_TEST_BROKEN"]
if which == "ssh":
    guard.guarded_change(
        name="broken sshd configuration", change_id="ssh",
        contents={SSHD_CONFIG: "PermitRootLogin no\nThisIsNotAnOption yes\nPasswordAuthentication maybe\n"},
        modes={SSHD_CONFIG: "600"}, validate=["mkdir -p /run/sshd", "sshd -t -f {staged}" + SSHD_CONFIG],
        reload="systemctl reload ssh.service", revert_seconds=60, confirm_user=ADMIN_USER.value(host.data))
else:
    guard.guarded_change(
        name="broken nftables ruleset", change_id="firewall",
        contents={NFT_CONF: "table inet hardkit {\n chain input { type filter hook input priority 0; policy acept; }\n"},
        modes={NFT_CONF: "755"}, validate=["nft -c -f {staged}" + NFT_CONF],
        reload=f"nft -f {NFT_CONF}", revert_seconds=60, confirm_user=ADMIN_USER.value(host.data))
