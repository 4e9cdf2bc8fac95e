"""An OpenSSH sshd on 127.0.0.1 for the ssh executor's tests: a high port, its own config, throwaway keys,
key-only, `UsePAM no`, own PidFile, no sftp subsystem (the executor needs none); started by a module fixture and
stopped by its PID. `make arm-emulator` installs openssh-server. The "device" runs entry points with this venv's
python. Import `sshd` (and `_url`, `_free_port`) into a test module to use it."""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

SSHD = "/usr/sbin/sshd"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not (os.path.exists(SSHD) and shutil.which("ssh")):
        pytest.fail("openssh-server / openssh-client are not installed (make arm-emulator installs them)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
LogLevel ERROR
""")
    os.makedirs("/run/sshd", exist_ok=True)  # the privilege-separation directory sshd insists on
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("sshd did not listen within 10 s")
    yield {"port": port, "key": d / "client_key", "known_hosts": d / "known_hosts", "user": getpass.getuser()}
    os.kill(proc.pid, signal.SIGTERM)  # by its own PID
    proc.wait(timeout=10)
    log.close()


def _url(sshd, port=None):
    return (f"ssh://{sshd['user']}@127.0.0.1:{port or sshd['port']}?key={sshd['key']}"
            f"&known_hosts={sshd['known_hosts']}&python={sys.executable}")
