//! vipd: VRRP failover of virtual IPs and HTTP load balancing in one daemon.
//!
//! The protocol logic (`vrrp::packet`, `vrrp::fsm`, `net::frames`) is pure;
//! the modules that touch the kernel (`vrrp::socket`, `net::addr`,
//! `net::announce`) are thin. See DESIGN.md for the data flow.

pub mod announce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod location;
pub mod manpage;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod systemd;
pub mod upgrade;
pub mod vrrp;
