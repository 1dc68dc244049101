//! HTTP/1.1 on the wire, pure: message heads parsed and rewritten
//! (`head`), bodies followed and re-framed (`chunked`), and the read buffer
//! both sides of a proxied exchange use (`buf`).

pub mod buf;
pub mod chunked;
pub mod head;
