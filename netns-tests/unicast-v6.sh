#!/usr/bin/env bash
# unicast-v6.sh: unicast.sh for an IPv6 instance: the peers are each
# other's link-local addresses (where IPv6 adverts come from), multicast is
# dropped by the switch; VRRPv3 only, with vipd and keepalived each way.
export V6=1
exec "$(dirname "$0")/unicast.sh" "$@"
