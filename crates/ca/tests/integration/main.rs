//! Integration tests of the certificate authority, through its public API only.
//!
//! One test binary (modules below) keeps link time down on small machines.

mod authority;
mod common;
mod crl;
mod csr;
mod fuzz;
mod hierarchy;
mod server_identity;
mod tls;
