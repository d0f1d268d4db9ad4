//! The benchmark harness: the same workload through the raw client and through
//! `Box<dyn Publisher>`, alternating A B A B in one process, and a resource soak.
#![forbid(unsafe_code)]

pub mod raw;
pub mod report;
pub mod soak;
pub mod target;
pub mod workload;
