//! Active-active mode: every node serves the service addresses behind a
//! router doing ECMP, and the host's routing daemon (FRR, BIRD) announces
//! them while this node is healthy. vipd speaks no BGP: it puts the
//! addresses on an interface the routing daemon exports (its connected
//! routes) while every tracker passes, and takes them off when one fails or
//! a planned stop begins, keeping them local by a `local` route (which no
//! routing daemon exports) so that traffic still routed here is served
//! until the stop's `withdraw_delay` ends.

pub mod decide;
pub mod driver;

use std::time::Duration;

use crate::net::addr::VirtualIp;
use crate::vrrp::track::TrackerSpec;

/// One `[[announce]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSpec {
    /// Its name, in logs and status.
    pub name: String,
    /// The service addresses.
    pub virtual_ips: Vec<VirtualIp>,
    /// The interface the routing daemon exports (created if missing).
    pub interface: String,
    /// What must pass for the addresses to be announced.
    pub trackers: Vec<TrackerSpec>,
    /// How long a planned stop keeps serving after withdrawing.
    pub withdraw_delay: Duration,
}
