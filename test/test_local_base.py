"""docker/local-base.sh takes its Debian mirror from the machine's apt sources (or DEBIAN_MIRROR), not from a host
name written into the script. Only its `--print-mirror` is run: no Docker needed."""
import os
import re
import subprocess

import pytest

from conftest import ROOT

SCRIPT = ROOT / "docker" / "local-base.sh"
SECURITY_FIRST = """Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://sources.example/debian
Suites: bookworm

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm

Types: deb
# a comment inside a stanza: http://comment.example/debian
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
"""


def mirror(apt: dict[str, str], tmp_path, debian_mirror: str = "") -> subprocess.CompletedProcess:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in apt.items():
        (etc / name).write_text(text)
    env = {**os.environ, "APT_ETC": str(etc), "DEBIAN_MIRROR": debian_mirror}
    return subprocess.run(["bash", str(SCRIPT), "--print-mirror"], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("apt, expected", [
    ({"sources.list.d/debian.sources": SECURITY_FIRST}, "http://mirror.example/debian"),
    ({"sources.list": "# deb http://old.example/debian bookworm main\n"
                      "deb-src http://sources.example/debian bookworm main\n"
                      "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://line.example/debian/ bookworm main\n"},
     "https://line.example/debian/"),
    ({"sources.list.d/ubuntu.list": "deb http://ubuntu.example/ubuntu noble main\n",
      "sources.list.d/snapshot.list": "deb http://snapshot.example/archive/debian/20250520T000000Z bookworm main\n"},
     "http://snapshot.example/archive/debian/20250520T000000Z"),
], ids=["deb822", "one-line", "snapshot"])
def test_the_mirror_comes_from_the_apt_sources(apt, expected, tmp_path):
    done = mirror(apt, tmp_path)
    assert (done.returncode, done.stdout) == (0, expected + "\n"), done.stderr


def test_debian_mirror_wins_when_set(tmp_path):
    done = mirror({"sources.list.d/debian.sources": SECURITY_FIRST}, tmp_path, "http://chosen.example/debian")
    assert (done.returncode, done.stdout) == (0, "http://chosen.example/debian\n")


@pytest.mark.parametrize("apt", [{}, {"sources.list": "deb http://ubuntu.example/ubuntu noble main\n"}],
                         ids=["no-sources", "no-debian-source"])
def test_no_debian_mirror_is_a_clear_error(apt, tmp_path):
    done = mirror(apt, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert "no Debian mirror" in done.stderr and "DEBIAN_MIRROR" in done.stderr


def test_no_mirror_address_is_written_into_the_script():
    assert not re.search(r"\w+://", SCRIPT.read_text())
