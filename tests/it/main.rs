//! pgpulse's integration tests: real PostgreSQL (a throwaway cluster from the system's
//! binaries), real HTTP, the real binary.

mod harness;
mod migrations;
mod commands;
mod partitions;
mod schema_objects;
mod service;
mod exporter;
mod config;
mod secrets;
mod catalog;
mod cardinality;
