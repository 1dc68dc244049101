//! The HTTP reverse-proxy load balancer: listeners, forwarding, backend
//! selection and health.

pub mod attempt;
pub mod backends;
pub mod balance;
pub mod codec;
pub mod date;
pub mod h1;
pub mod h2;
pub mod health;
pub mod meter;
pub mod params;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod within;
