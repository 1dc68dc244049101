//! Address management and neighbour announcements on the interface.

pub mod addr;
pub mod announce;
pub mod frames;
