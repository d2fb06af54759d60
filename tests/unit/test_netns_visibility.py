"""Reading /proc/self/mountinfo: is the mount that holds /run/netns shared with the machine,
and would a vnetd here create namespaces the rest of the machine can see?"""

from __future__ import annotations

from vnet.errors import describe_os_error
from vnet.host.netns import mount_tags, mounts_are_private

# Lines as this machine's kernel writes them: the machine's view, then ip netns exec's.
MACHINE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard
46 45 0:4 net:[4026532178] /run/netns/vb21047-h rw shared:2 - nsfs nsfs rw
"""
IP_NETNS_EXEC = """\
51 50 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
71 51 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw,discard
72 71 0:4 net:[4026532178] /run/netns/vb21047-h rw master:2 - nsfs nsfs rw
54 51 0:40 / /sys rw,relatime - sysfs vb21047-h rw
"""


def test_the_mount_holding_a_path_is_the_deepest_one() -> None:
    assert mount_tags(MACHINE, "/run/netns") == ("shared:1",)
    assert mount_tags(MACHINE, "/run/netns/new-one") == ("shared:1",)
    assert mount_tags(MACHINE, "/run/netnsX") == ()          # a sibling, not beneath
    assert mount_tags(IP_NETNS_EXEC, "/run/netns") == ("master:1",)
    assert mount_tags("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "/run/netns") == ()


def test_a_later_mount_on_the_same_point_is_the_one_on_top() -> None:
    stacked = MACHINE + "90 45 0:50 / /run/netns rw master:7 - tmpfs tmpfs rw\n"
    assert mount_tags(stacked, "/run/netns") == ("master:7",)


def test_escaped_mount_points_and_several_tags() -> None:
    text = "60 27 0:51 / /run/my\\040netns rw shared:3 master:1 - tmpfs tmpfs rw\n"
    assert mount_tags(text, "/run/my netns/x") == ("shared:3", "master:1")


def test_private_when_a_slave_or_another_namespace_than_the_machines() -> None:
    own = "mnt:[4026531832]"
    assert not mounts_are_private(own, [own, own], ("shared:1",))
    assert not mounts_are_private(own, [], ())              # nothing to compare: no tags
    assert mounts_are_private(own, [], ("master:1",))       # ip netns exec
    assert mounts_are_private(own, [], ("shared:4", "master:1"))  # ip netns add inside it
    assert mounts_are_private(own, ["mnt:[4026531840]"], ())      # unshare -m


def test_an_os_error_in_words_without_errno() -> None:
    text = describe_os_error(PermissionError(13, "Permission denied", "/var/lib/vnet"))
    assert text == "/var/lib/vnet: Permission denied (vnet needs root: run it as root or " \
                   "with sudo)"
    assert "Errno" not in describe_os_error(OSError(98, "Address already in use"))
    assert describe_os_error(TimeoutError("timed out")) == "timed out"
    assert describe_os_error(ConnectionResetError()) == "ConnectionResetError"
