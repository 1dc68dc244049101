#!/usr/bin/env bash
# preempt.sh: lb1 (150) is stopped, lb2 (100) takes over. lb1 comes back:
#  1. with preempt = true it must take the VIP back (after its
#     Master_Down_Interval: RFC 5798 §6.4.2 ignores a lower-priority master's
#     adverts when preempting) and lb2 must return to backup;
#  2. with preempt = false it must stay backup and lb2 keeps the VIP.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
topo_up lb1 lb2 client
start_node "$IMPL" lb1 150 $INTERVAL 3 true
start_node "$IMPL" lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000

stop_lb1_and_failover() {
    term_node lb1 || fail "lb1 exited non-zero on SIGTERM"
    wait_pair_settled_lb2() { state_is lb2 master && holder_is lb2; }
    wait_for 2000 wait_pair_settled_lb2 || fail "lb2 did not take over: lb2=$(node_state lb2) VIP on: $(vip_holder)"
    sleep 0.3
}

# 1. preempt = true
stop_lb1_and_failover
t0=$(now_ms)
start_node "$IMPL" lb1 150 $INTERVAL 3 true
wait_for 3000 pair_settled lb1 lb2 ||
    fail "preempt=true: lb1 did not take back the VIP: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
back=$(($(now_ms) - t0))

# 2. preempt = false
stop_lb1_and_failover
tr2=$(node_transitions lb2)
start_node "$IMPL" lb1 150 $INTERVAL 3 false
wait_for 3000 state_is lb1 backup || fail "preempt=false: lb1 never reached backup (state $(node_state lb1))"
# Well past lb1's Master_Down_Interval (0.34 s): it must still be backup.
sleep 2
pair_settled lb2 lb1 ||
    fail "preempt=false: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder) (want lb2 master alone)"
[[ $(node_transitions lb2) == "$tr2" ]] || fail "preempt=false: lb2 changed state meanwhile (transitions $tr2 -> $(node_transitions lb2))"

pass "preempt=true: lb1 master again ${back} ms after restart (its MDI $(mdi_ms 150 $INTERVAL) ms); preempt=false: lb1 backup, lb2 kept the VIP for 2 s"
