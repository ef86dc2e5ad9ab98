//! The metric contract: every metric pgpulse promises (for a PostgreSQL target, and for a
//! PgBouncer target), and the check that the rules and dashboards use no other. That a live
//! pgpulse emits them is checked in `live` (PostgreSQL) and tests/it/pgbouncer (PgBouncer).

use std::collections::BTreeSet;

use super::promql::used_metrics;

/// Every metric pgpulse promises (the metric contract), plus Prometheus' own `up`.
const CONTRACT: &str = "up pg_up pg_server_version_num pgpulse_build_info
    pgpulse_query_errors_total pgpulse_query_runs_total pgpulse_query_duration_seconds_bucket
    pgpulse_query_duration_seconds_sum pgpulse_query_duration_seconds_count
    pgpulse_query_last_success_timestamp_seconds pgpulse_query_series
    pgpulse_query_series_dropped_total pgpulse_config_last_reload_successful
    pg_database_blocks_hit_total pg_database_blocks_read_total pg_database_cache_hit_ratio
    pg_cache_hit_ratio pg_cache_blocks_hit_total pg_cache_blocks_read_total
    pg_table_live_tuples pg_table_dead_tuples pg_table_dead_tuple_ratio pg_table_size_bytes
    pg_table_seq_scans_total pg_table_index_scans_total pg_table_index_usage_ratio
    pg_table_last_vacuum_age_seconds pg_table_last_analyze_age_seconds
    pg_index_scans_total pg_index_size_bytes pg_unused_indexes pg_unused_indexes_size_bytes
    pg_connections pg_settings_max_connections pg_settings_superuser_reserved_connections
    pg_connections_usage_ratio pg_oldest_transaction_age_seconds
    pg_longest_idle_in_transaction_seconds
    pg_blocked_sessions pg_lock_wait_longest_seconds pg_lock_root_blocked_sessions
    pg_lock_root_blocked_seconds_total pg_lock_root_state_age_seconds pg_lock_root_transaction_age_seconds
    pg_partition_count pg_partition_size_bytes pg_partition_rows pg_partition_default_rows
    pg_partition_runway_seconds
    pg_stat_statements_available pg_statement_calls_total pg_statement_exec_seconds_total
    pg_slow_statements pg_statement_latency_seconds_bucket pg_statement_latency_seconds_sum
    pg_statement_latency_seconds_count pg_health_check_status
    pg_maintenance_job_since_success_seconds pg_maintenance_job_period_seconds
    pg_maintenance_job_failures_total

    pg_plan_expected_index_used pg_plan_partitions_scanned pg_plan_partitions
    pg_plan_partitions_expected_max pg_plan_estimated_cost pgpulse_plan_check_errors_total
    pgpulse_plan_check_last_success_timestamp_seconds pg_plan_check_applicable
    pg_key_query_info pg_key_query_slo_target_seconds pg_key_query_slo_objective_ratio
    pg_key_query_calls_total pg_key_query_exec_seconds_total pg_key_query_slo_misses_total
    pg_key_query_slo_miss_threshold_seconds

    pg_database_xact_commits_total pg_database_xact_rollbacks_total pg_database_deadlocks_total
    pg_database_temp_files_total pg_database_temp_bytes_total pg_database_conflicts_total
    pg_database_checksum_failures_total pg_database_size_bytes
    pg_database_xid_age_xids pg_database_multixact_age_multixacts pg_table_xid_age_xids
    pg_table_multixact_age_multixacts pg_postmaster_start_time_seconds pg_server_in_recovery
    pg_settings_autovacuum_freeze_max_age_xids
    pg_settings_autovacuum_multixact_freeze_max_age_multixacts
    pg_settings_autovacuum_max_workers pg_settings_pending_restart
    pg_wal_records_total pg_wal_full_page_images_total pg_wal_generated_bytes_total
    pg_wal_directory_size_bytes pg_archiver_archived_total pg_archiver_failed_total
    pg_archiver_last_archived_age_seconds pg_archiver_last_failure_age_seconds
    pg_checkpoints_timed_total pg_checkpoints_requested_total pg_checkpoint_write_seconds_total
    pg_checkpoint_sync_seconds_total pg_buffers_backend_written_total
    pg_replication_replay_lag_bytes pg_replication_flush_lag_bytes
    pg_replication_replay_lag_seconds pg_replication_slot_active
    pg_replication_slot_retained_wal_bytes pg_replication_slot_wal_status
    pg_standby_replay_lag_bytes pg_standby_replay_lag_seconds pg_standby_replay_paused pg_standby_receive_lag_bytes
    pg_locks pg_lock_table_usage_ratio pg_autovacuum_workers pg_longest_running_statement_seconds
    pg_vacuum_heap_scanned_ratio pg_sequence_used_ratio pg_client_connections
    pg_database_load_session_seconds_total
    pg_trade_table_lock_queue pg_trade_table_lock_queue_seconds pg_trade_table_lock_waiting_sessions
    pg_trade_table_lock_waiting_sessions_by_mode

    pg_statement_executions_over_threshold_total pg_statement_executions_threshold_seconds
    pgpulse_database_user_info pgpulse_slow_log_up pgpulse_slow_log_lag_bytes
    pgpulse_slow_log_gap_bytes_total pgpulse_slow_log_polls_total
    pgpulse_slow_log_read_bytes_total pgpulse_slow_log_statements_total";

/// Every metric pgpulse promises for a target of kind `pgbouncer` (PgBouncer's admin console:
/// SHOW POOLS, DATABASES, STATS, LISTS, CONFIG, VERSION), with its own self-metrics. A
/// PostgreSQL target emits none of them, so the live checks of `live` leave them out;
/// tests/it/pgbouncer asserts that a live PgBouncer target emits every one.
pub(crate) const PGBOUNCER_CONTRACT: &str = "pgbouncer_up pgbouncer_version_info
    pgbouncer_start_time_seconds
    pgbouncer_pool_clients pgbouncer_pool_servers pgbouncer_pool_max_wait_seconds
    pgbouncer_database_pool_size pgbouncer_database_reserve_pool_size
    pgbouncer_database_connections pgbouncer_database_max_connections
    pgbouncer_database_paused pgbouncer_database_disabled
    pgbouncer_client_connections pgbouncer_server_connections pgbouncer_max_client_connections
    pgbouncer_transactions_total pgbouncer_queries_total pgbouncer_received_bytes_total
    pgbouncer_sent_bytes_total pgbouncer_transaction_seconds_total pgbouncer_query_seconds_total
    pgbouncer_client_wait_seconds_total
    pgpulse_pgbouncer_commands_total pgpulse_pgbouncer_errors_total
    pgpulse_pgbouncer_series_dropped_total";

/// Whether `metric` is one of a PgBouncer target's (in [`PGBOUNCER_CONTRACT`]).
pub(super) fn is_pgbouncer_metric(metric: &str) -> bool {
    PGBOUNCER_CONTRACT.split_whitespace().any(|m| m == metric)
}

/// Nothing in a rule or dashboard refers to a metric pgpulse does not promise (for a
/// PostgreSQL or a PgBouncer target).
#[test]
fn every_metric_used_by_dashboards_and_alerts_is_in_the_contract() {
    let contract: BTreeSet<&str> = CONTRACT
        .split_whitespace()
        .chain(PGBOUNCER_CONTRACT.split_whitespace())
        .collect();
    let unknown: Vec<String> = used_metrics()
        .into_iter()
        .filter(|m| !contract.contains(m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "not in the metric contract: {unknown:?}"
    );
}
