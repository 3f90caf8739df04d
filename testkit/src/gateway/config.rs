//! Gateway configurations for tests: fast flushes and retries, loopback servers, and the
//! example bindings (or a PostgreSQL cluster) as the source of bindings.

use std::path::{Path, PathBuf};

use crate::postgres::Postgres;
use crate::repo::repo_root;

/// The InfluxDB database the example bindings write to.
pub const DB: &str = "heartguard_vitals";

/// `config/bindings.example.toml`: the central fixture's sample data as a bindings file.
pub fn example_bindings() -> PathBuf {
    repo_root().join("config/bindings.example.toml")
}

/// A gateway configuration for tests: fast flushes and retries, the given InfluxDB and
/// bindings; `extra` lines go into the `[influx]` table, `queue` lines into `[queue]`.
pub fn gateway_toml(dir: &Path, mqtt_url: &str, influx_url: &str, api: &str, bindings: &Path, extra: &str) -> String {
    gateway_toml_with_queue(dir, mqtt_url, influx_url, api, bindings, extra, "")
}

/// `gateway_toml` with `queue` lines in the `[queue]` table.
pub fn gateway_toml_with_queue(
    dir: &Path,
    mqtt_url: &str,
    influx_url: &str,
    api: &str,
    bindings: &Path,
    extra: &str,
    queue: &str,
) -> String {
    format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
shutdown_grace_ms = 5000

[mqtt]
url = "{mqtt_url}"

[influx]
url = "{influx_url}"
api = "{api}"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000
{extra}

[queue]
{queue}

[bindings]
file = "{bindings}"
"#,
        data = dir.join("data").display(),
        bindings = bindings.display(),
    )
}

/// A gateway configuration whose bindings come from `pg` (plain TCP on loopback).
pub fn gateway_toml_pg(dir: &Path, mqtt_url: &str, influx_url: &str, pg: &Postgres, bindings_extra: &str) -> String {
    let url_file = dir.join("pg-url");
    std::fs::write(&url_file, pg.url()).expect("write the connection string file");
    std::fs::set_permissions(&url_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
shutdown_grace_ms = 5000

[mqtt]
url = "{mqtt_url}"

[influx]
url = "{influx_url}"
api = "v1"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000

[bindings]
postgres_url_file = "{url_file}"
sslmode = "disable"
freshness_poll_ms = 100
{bindings_extra}
"#,
        data = dir.join("data").display(),
        url_file = url_file.display(),
    )
}
