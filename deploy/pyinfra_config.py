"""pyinfra's settings for hardkit's deploys, passed as `pyinfra --config` (deploy/runner.py).

A config file, not the deploy file: pyinfra runs it before it locks the configuration, and puts back
the locked configuration after loading each deploy file, so a setting made in deploy/site.py is gone
by the time the operations run.
"""

from pyinfra import config

#: pyinfra stages every upload in a temporary folder, by default the remote $TMPDIR as a sudo shell
#: sees it. pam_tmpdir (roles/accounts.py) makes that root's private /tmp/user/0 (0700), which the
#: admin's SFTP upload cannot write to. /tmp (sticky, for everyone) is where an upload waits until
#: sudo moves it into place, as before pam_tmpdir.
config.TEMP_DIR = "/tmp"
