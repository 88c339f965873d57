//! The Docker release coordinator (bollard). Never on the request path.

pub mod cli;
