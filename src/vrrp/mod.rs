//! VRRP: wire format, state machine, and the instance that drives them.

pub mod command;
pub mod fsm;
pub mod instance;
pub mod notify;
pub mod packet;
pub mod probe;
pub mod socket;
pub mod sync;
pub mod timer;
pub mod track;
