#!/bin/sh
# /init of the Hospes default initramfs; runs as PID 1 under busybox ash.
#
# The rest of Hospes relies on this contract (see hospes.images.initramfs):
#   1. mount proc, sysfs, devtmpfs (else keep the static /dev nodes of the archive)
#      and devpts; set PATH; hostname "hospes".
#   2. insmod the modules listed in /etc/hospes/modules, already in dependency
#      order; silent on success, one warning line per failure.
#   3. print "hospes: userspace up" -- the host times boots by this line. From
#      here a busybox uevent listener onlines every CPU the kernel adds (what
#      udev does in a full distribution: `hospes vcpu-set` makes a vCPU present,
#      bringing it online is user space's part).
#   4. with "hospes.cmd=<base64>" on the kernel command line: decode it, run it
#      with /bin/sh -c on the console (/dev/hvc0, else /dev/console), print one
#      line "hospes-exit-status=<N>" (125 if the token does not decode), sync and
#      power off -- or reboot when "hospes.reboot=1" is on the command line too.
#   5. otherwise: an interactive shell with job control on the console; power off
#      when it exits (no respawn).
#
# With HOSPES_INIT_LIB=1 in the environment, sourcing this file only defines the
# functions; tests use that to exercise the command-line handling on the host.

HOSPES_CMDLINE=${HOSPES_CMDLINE:-/proc/cmdline}
HOSPES_MODULE_LIST=${HOSPES_MODULE_LIST:-/etc/hospes/modules}
# Run for each kernel uevent, with the event in the environment.
HOSPES_ONLINE_CPU='[ "$SUBSYSTEM" = cpu ] && [ "$ACTION" = add ] && [ -w "/sys$DEVPATH/online" ] && echo 1 >"/sys$DEVPATH/online"'

# hospes_cmdline_arg NAME [FILE]: print the value of the last NAME=VALUE word of
# the kernel command line (the last one wins, as for kernel parameters); fail if
# there is none.
hospes_cmdline_arg() {
    _hc_name=$1
    _hc_file=${2:-$HOSPES_CMDLINE}
    _hc_found=1
    _hc_value=
    [ -r "$_hc_file" ] || return 1
    set -f
    for _hc_word in $(cat "$_hc_file"); do
        case $_hc_word in
            "$_hc_name"=*) _hc_value=${_hc_word#*=}; _hc_found=0 ;;
        esac
    done
    set +f
    [ "$_hc_found" = 0 ] || return 1
    printf '%s\n' "$_hc_value"
}

# hospes_decode_cmd B64: print the shell command line that encode_command() encoded.
hospes_decode_cmd() {
    printf '%s' "$1" | base64 -d
}

# hospes_run_cmd CMD: run CMD with /bin/sh -c on the current stdio, then print
# its exit status line.
hospes_run_cmd() {
    /bin/sh -c "$1"
    echo "hospes-exit-status=$?"
}

# hospes_load_modules: insmod every module of the list, in its order.
hospes_load_modules() {
    [ -r "$HOSPES_MODULE_LIST" ] || return 0
    while read -r _hm_path; do
        case $_hm_path in ''|'#'*) continue ;; esac
        if ! _hm_err=$(insmod "$_hm_path" 2>&1); then
            echo "hospes: warning: insmod $_hm_path failed: $_hm_err" >&2
        fi
    done <"$HOSPES_MODULE_LIST"
}

# busybox's halt/poweroff/reboot signal PID 1 (USR1/USR2/TERM), as does the
# kernel's orderly_poweroff when the toolstack writes control/shutdown.
hospes_on_signal() {
    sync
    if [ "$1" = reboot ]; then
        reboot -f
    else
        poweroff -f
    fi
}

hospes_main() {
    trap 'hospes_on_signal poweroff' USR1 USR2
    trap 'hospes_on_signal reboot' TERM
    PATH=/usr/sbin:/usr/bin:/sbin:/bin
    HOME=/root
    TERM=linux
    PS1='\h:\w\$ '
    export PATH HOME TERM PS1
    umask 022

    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    if ! mount -t devtmpfs devtmpfs /dev 2>/dev/null; then
        echo "hospes: warning: no devtmpfs, using the static /dev nodes" >&2
    fi
    mkdir -p /dev/pts
    mount -t devpts devpts /dev/pts
    /bin/busybox --install -s
    hostname hospes

    # PID 1 takes the console as its controlling tty here; cttyhack below steals
    # it for the interactive shell's own session.
    # (A failing redirection on exec would end PID 1, hence the trial open.)
    tty=/dev/console
    if [ -c /dev/hvc0 ] && (: <>/dev/hvc0) 2>/dev/null; then
        tty=/dev/hvc0
    fi
    exec <"$tty" >"$tty" 2>&1

    hospes_load_modules
    # After the modules: the boot's own uevents need no handler.
    uevent /bin/sh -c "$HOSPES_ONLINE_CPU" </dev/null >/dev/null 2>&1 &
    echo "hospes: userspace up"

    if b64=$(hospes_cmdline_arg hospes.cmd); then
        if cmd=$(hospes_decode_cmd "$b64"); then
            # In the background so that PID 1 can act on signals meanwhile.
            hospes_run_cmd "$cmd" <"$tty" &
            wait $!
        else
            echo "hospes: warning: hospes.cmd is not valid base64" >&2
            echo "hospes-exit-status=125"
        fi
        sync
        if [ "$(hospes_cmdline_arg hospes.reboot)" = 1 ]; then
            reboot -f
        else
            poweroff -f
        fi
    else
        setsid cttyhack sh &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            wait "$pid"
        done
        sync
        poweroff -f
    fi
    echo "hospes: warning: could not power off" >&2
}

[ "${HOSPES_INIT_LIB:-0}" = 1 ] || hospes_main "$@"
