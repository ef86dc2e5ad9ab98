//! pgpulse's integration tests: real PostgreSQL (a throwaway cluster from the system's
//! binaries), real HTTP, the real binary.

mod alerts;
mod cardinality;
mod catalog;
mod commands;
mod config;
mod demo;
mod docker;
mod exporter;
mod golden;
mod harness;
mod maintenance;
mod migrations;
mod partitions;
mod replication;
mod schema_objects;
mod secrets;
mod service;
mod signals;
