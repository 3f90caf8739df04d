//! Proxies in front of real servers, for what those servers will not do on demand: `tcp`
//! swallows one direction and cuts connections, `fault` answers chosen HTTP requests itself,
//! `nginx` terminates TLS with client certificates.

pub mod fault;
pub mod nginx;
pub mod tcp;
