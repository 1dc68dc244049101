//! VRRP: wire format, state machine, and the instance that drives them.

pub mod fsm;
pub mod instance;
pub mod packet;
pub mod socket;
pub mod timer;
