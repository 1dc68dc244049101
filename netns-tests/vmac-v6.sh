#!/usr/bin/env bash
# vmac-v6.sh: vmac.sh for an IPv6 instance: the macvlan vrrp6.51 carries
# 00:00:5e:00:02:33 and a random link-local address that adverts come from;
# the client's neighbour entry for 2001:db8::10 stays the virtual MAC.
export V6=1
exec "$(dirname "$0")/vmac.sh" "$@"
