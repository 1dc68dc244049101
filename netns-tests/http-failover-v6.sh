#!/usr/bin/env bash
# http-failover-v6.sh: http-failover.sh with an IPv6 VRRP instance (VIPs
# fe80::10 and 2001:db8::10, proxy on [::]:8080): the client's requests go
# to http://[2001:db8::10]:8080/ through a crash (recovery within
# Master_Down_Interval + 1 s) and a planned stop (no request may fail).
export V6=1
exec "$(dirname "$0")/http-failover.sh" "$@"
