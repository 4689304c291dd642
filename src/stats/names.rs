//! Every metric name in one place (SPEC section 5 fixes them).

pub const REQUESTS: &str = "simian_requests_total";
pub const DURATION: &str = "simian_request_duration_seconds";
pub const RECEIVED: &str = "simian_received_bytes_total";
pub const SENT: &str = "simian_sent_bytes_total";
pub const MATCHES: &str = "simian_match_requests_total";
pub const CLIENT_CONNECTIONS: &str = "simian_client_connections";
pub const PARKED_CONNECTIONS: &str = "simian_client_connections_parked";
pub const SERVER_UP: &str = "simian_server_up";
pub const SERVER_ACTIVE: &str = "simian_server_active_requests";
pub const SERVER_ADMIN_STATE: &str = "simian_server_admin_state";
pub const SERVER_WEIGHT: &str = "simian_server_weight";
pub const SERVER_CONNECT_FAILURES: &str = "simian_server_connect_failures_total";
pub const SERVER_OFFLINE_TRANSITIONS: &str = "simian_server_offline_transitions_total";
pub const HEALTH_CHECKS: &str = "simian_health_checks_total";
pub const RELOADS: &str = "simian_config_reloads_total";
pub const LAST_RELOAD: &str = "simian_config_last_reload_success_timestamp_seconds";
pub const BUILD_INFO: &str = "simian_build_info";
pub const TLS_HANDSHAKES: &str = "simian_tls_handshakes_total";
pub const TLS_CERT_EXPIRY: &str = "simian_tls_certificate_expiry_timestamp_seconds";
pub const LOCAL_ERRORS: &str = "simian_local_errors_total";
pub const LOG_LINES_DROPPED: &str = "simian_log_lines_dropped_total";
pub const RATE_LIMITED: &str = "simian_rate_limited_total";
pub const STICKY_ENTRIES: &str = "simian_sticky_table_entries";
