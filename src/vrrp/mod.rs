//! VRRP: wire format, state machine, the router of each interface, and the
//! driver that runs them.

pub mod command;
pub mod driver;
pub mod fsm;
pub mod notify;
pub mod operator;
pub mod packet;
pub mod probe;
pub mod relay;
pub mod router;
pub mod socket;
pub mod stats;
pub mod sync;
pub mod timer;
pub mod track;
