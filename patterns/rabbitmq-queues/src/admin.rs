//! Breaking it on purpose: make the broker drop every client connection, as a network failure or
//! a broker restart would. Used by the reconnection test and the example's `--drop-connection`.

use std::process::Command;

/// Runs `rabbitmqctl close_all_connections` natively, or inside the compose stack's `rabbitmq`
/// container. Says why, when neither could.
pub fn close_all_connections(reason: &str) -> Result<(), String> {
    let args = ["close_all_connections", reason];
    let native = Command::new("rabbitmqctl").args(args).output();
    if native.as_ref().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    // docker compose finds docker-compose.yml from the workspace root, wherever we were started.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = Command::new("docker")
        .args(["compose", "exec", "-T", "rabbitmq", "rabbitmqctl"])
        .args(args)
        .current_dir(root)
        .output();
    match compose {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(format!(
            "neither `rabbitmqctl` (native broker) nor `docker compose exec rabbitmq rabbitmqctl` could close connections ({native:?})"
        )),
    }
}
