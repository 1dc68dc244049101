//! The HTTP reverse-proxy load balancer: listeners, forwarding, backend
//! selection and health.

pub mod backends;
pub mod balance;
pub mod body;
pub mod forward;
pub mod h1;
pub mod health;
pub mod idle;
pub mod meter;
pub mod server;
pub mod tls;
pub mod upstream;
