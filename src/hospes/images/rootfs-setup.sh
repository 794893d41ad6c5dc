#!/bin/sh
# Runs inside the new root filesystem (chroot, as mmdebstrap's customize hook) to make
# it a Xen PV guest's disk: `hospes image --rootfs` prepends the settings below
# (HOSPES_HOSTNAME, HOSPES_ADDRESS, HOSPES_SSH_KEY) as shell assignments.
set -eu

# --- identity and the root filesystem (the whole disk /dev/xvda, no partitions) ---------
echo "$HOSPES_HOSTNAME" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    "$HOSPES_HOSTNAME" > /etc/hosts
printf '# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/xvda / ext4 errors=remount-ro 0 1\n' \
    > /etc/fstab
# Every copy of the image gets its own machine id at its first boot; systemd-firstboot
# would ask for a locale, time zone and password on the console instead of booting.
: > /etc/machine-id
ln -sf /dev/null /etc/systemd/system/systemd-firstboot.service

# --- logins: root on the console without a password, over SSH with the given key only ----
passwd -d root >/dev/null
if [ -n "$HOSPES_SSH_KEY" ]; then
    mkdir -p -m 700 /root/.ssh
    printf '%s\n' "$HOSPES_SSH_KEY" > /root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
fi
# The login prompt is on the kernel's console (console=hvc0, Xen's console). It runs
# on /dev/console: serial-getty@hvc0 would wait for udev's dev-hvc0.device, which
# may take longer than systemd's 90 s on a loaded host; the generator's instance
# of it is masked so that one getty owns the console. No VTs on Xen PV: no tty1.
mkdir -p /etc/systemd/system/getty.target.wants
ln -sf /lib/systemd/system/console-getty.service /etc/systemd/system/getty.target.wants/console-getty.service
ln -sf /dev/null /etc/systemd/system/serial-getty@hvc0.service
ln -sf /dev/null /etc/systemd/system/getty@tty1.service
# Periodic maintenance a short-lived test guest does not need, and that slows its boot.
for unit in e2scrub_reap.service e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer \
        dpkg-db-backup.timer; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
# The image's SSH host keys are made at each copy's first boot, not shared by all copies.
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/hospes-ssh-hostkeys.service <<'EOF'
[Unit]
Description=Create this guest's SSH host keys
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/hospes-ssh-hostkeys.service /etc/systemd/system/multi-user.target.wants/

# --- network: every Xen vif (driver "vif", named enX0 or eth0 by udev), DHCP plus a fixed address --
mkdir -p /etc/systemd/network
cat > /etc/systemd/network/50-xen-vif.network <<EOF
# Written by hospes image --rootfs. DHCP when a server answers; the fixed link-local
# address is there in any case, so the host can reach the guest without one.
[Match]
Driver=vif

[Network]
DHCP=ipv4
LinkLocalAddressing=no
Address=$HOSPES_ADDRESS

[DHCPv4]
ClientIdentifier=mac
EOF
ln -sf /lib/systemd/system/systemd-networkd.service /etc/systemd/system/multi-user.target.wants/systemd-networkd.service
mkdir -p /etc/systemd/system/sockets.target.wants
ln -sf /lib/systemd/system/systemd-networkd.socket /etc/systemd/system/sockets.target.wants/systemd-networkd.socket

# --- the initramfs: the Xen block and network frontends, whatever MODULES= says ------------
for m in xen-blkfront xen-netfront; do
    grep -qx "$m" /etc/initramfs-tools/modules || echo "$m" >> /etc/initramfs-tools/modules
done
update-initramfs -u -k all >/dev/null

# --- /boot/grub/grub.cfg, rewritten whenever a kernel is installed or removed -------------
mkdir -p /usr/local/sbin /etc/kernel/postinst.d /etc/kernel/postrm.d
cat > /usr/local/sbin/hospes-update-grub <<'EOF'
#!/bin/sh
# Writes /boot/grub/grub.cfg as update-grub would for this guest's kernels (newest
# first, as the default entry; all of them under "Advanced options"). Hospes'
# pygrub reads it at each boot. Options for every kernel: /etc/default/hospes-grub.
set -eu
CMDLINE="root=/dev/xvda ro console=hvc0 quiet"
[ -r /etc/default/hospes-grub ] && . /etc/default/hospes-grub
versions=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -Vr)
mkdir -p /boot/grub
tmp=/boot/grub/grub.cfg.new
{
    echo "# Written by hospes-update-grub; run it again after editing /etc/default/hospes-grub."
    echo 'set default="0"'
    echo 'set timeout=0'
    first=1
    for v in $versions; do
        initrd=""
        [ -e "/boot/initrd.img-$v" ] && initrd="/boot/initrd.img-$v"
        if [ $first = 1 ]; then
            echo "menuentry 'Debian GNU/Linux' --class debian --id 'gnulinux-simple' {"
            echo "	linux	/boot/vmlinuz-$v $CMDLINE"
            [ -n "$initrd" ] && echo "	initrd	$initrd"
            echo "}"
            echo "submenu 'Advanced options for Debian GNU/Linux' --id 'gnulinux-advanced' {"
            first=0
        fi
        echo "	menuentry 'Debian GNU/Linux, with Linux $v' --class debian --id 'gnulinux-$v-advanced' {"
        echo "		linux	/boot/vmlinuz-$v $CMDLINE"
        [ -n "$initrd" ] && echo "		initrd	$initrd"
        echo "	}"
    done
    [ $first = 0 ] && echo "}"
} > "$tmp"
mv "$tmp" /boot/grub/grub.cfg
EOF
chmod 755 /usr/local/sbin/hospes-update-grub
printf '#!/bin/sh\n# A kernel was installed or removed: boot the newest one next time.\nexec /usr/local/sbin/hospes-update-grub\n' \
    > /etc/kernel/postinst.d/zz-hospes-update-grub
cp /etc/kernel/postinst.d/zz-hospes-update-grub /etc/kernel/postrm.d/zz-hospes-update-grub
chmod 755 /etc/kernel/postinst.d/zz-hospes-update-grub /etc/kernel/postrm.d/zz-hospes-update-grub
/usr/local/sbin/hospes-update-grub

# --- smaller: the downloaded packages and lists are not needed in the image --------------
apt-get clean
rm -rf /var/lib/apt/lists/*
