//! The HTTP reverse-proxy load balancer: listeners, forwarding, backend
//! selection and health.

pub mod attempt;
pub mod backends;
pub mod balance;
pub mod h1;
pub mod h2;
pub mod health;
pub mod idle;
pub mod meter;
pub mod server;
pub mod tls;
