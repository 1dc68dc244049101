//! The HTTP/1.x path of the proxy, written for it rather than built on a
//! general HTTP library: client connections are parsed, rewritten and
//! relayed in place over pooled backend connections. HTTP/2 clients are
//! handed to hyper (see `server`).

pub mod buf;
pub mod conn;
pub mod upstream;
pub mod wire;
