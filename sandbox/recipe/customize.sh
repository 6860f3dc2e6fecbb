#!/bin/sh
# mmdebstrap customize hook: make the rootfs look like a provider's fresh Debian 12 VPS image.
# $1 is the rootfs. Nothing the deploy is responsible for is installed here (no nftables, fail2ban,
# sudo, unattended-upgrades, auditd): the deploy must prove it installs them.
set -eu
root="$1"

# Networking as cloud images do it: systemd-networkd, DHCP on the provider's NIC names.
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/99-default.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
IPv6AcceptRA=yes
NET
chroot "$root" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"

# Root is reached with an injected key only (the lab injects it per target); no password.
chroot "$root" usermod -p '!' root
mkdir -p "$root/root/.ssh" && chmod 700 "$root/root/.ssh"

# Host keys and machine-id are made per target (as cloud-init does on first boot).
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# A provider leftover that hardening must overcome: cloud-init re-enabling passwords
# (hetzneronline/community-content #1177, cloud-init #5934).
mkdir -p "$root/etc/ssh/sshd_config.d"
echo "PasswordAuthentication yes" > "$root/etc/ssh/sshd_config.d/50-cloud-init.conf"

# For the vm tier: a small initramfs with the virtio disk driver, and the root filesystem.
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >> "$root/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
chroot "$root" update-initramfs -u -k all >/dev/null 2>&1
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"
# A serial console so the vm tier's boot can be read when something goes wrong.
chroot "$root" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true

echo "debian" > "$root/etc/hostname"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
