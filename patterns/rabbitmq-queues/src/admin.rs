//! Breaking it on purpose, and looking at the broker from outside: make the broker drop every
//! client connection, as a network failure or a broker restart would, and list who is connected.
//! Used by the reconnection test and the example's `--drop-connection`.
//!
//! These run `rabbitmqctl`, natively or inside the compose stack's `rabbitmq` container, and block
//! while it runs (about a second): call them from `tokio::task::spawn_blocking` in async code.

use std::process::Command;

/// Runs `rabbitmqctl` with `args` and returns its standard output. Says why, when neither
/// the native tool nor the container's could run it.
fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let native = run(Command::new("rabbitmqctl").args(args));
    let native_error = match native {
        Ok(stdout) => return Ok(stdout),
        Err(e) => e,
    };
    // docker compose finds docker-compose.yml from the workspace root, wherever we were started.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = run(Command::new("docker")
        .args(["compose", "exec", "-T", "rabbitmq", "rabbitmqctl"])
        .args(args)
        .current_dir(root));
    compose.map_err(|compose_error| {
        format!(
            "neither `rabbitmqctl` (native broker: {native_error}) nor `docker compose exec \
             rabbitmq rabbitmqctl` ({compose_error}) could run `{}`; --drop-connection and the \
             reconnection test need one of them on this machine",
            args.join(" ")
        )
    })
}

/// Runs `command`: its standard output, or why it did not succeed.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{}: {}", output.status, stderr.trim()))
    }
}

/// Makes the broker close every client connection, giving `reason`.
pub fn close_all_connections(reason: &str) -> Result<(), String> {
    rabbitmqctl(&["close_all_connections", reason]).map(drop)
}

/// The client-side TCP ports of the connections whose client named them `name` (the
/// `connection_name` client property): a different port is a different TCP connection.
pub fn connection_ports(name: &str) -> Result<Vec<u16>, String> {
    let listing = rabbitmqctl(&[
        "list_connections",
        "--quiet",
        "--no-table-headers",
        "client_properties",
        "peer_port",
    ])?;
    // One line per connection: the client properties as an Erlang term, a tab, the port.
    let property = format!("{{\"connection_name\",\"{name}\"}}");
    let mut ports = Vec::new();
    for line in listing.lines() {
        if let Some((properties, port)) = line.rsplit_once('\t')
            && properties.contains(&property)
        {
            let port = port.trim().parse().map_err(|e| format!("{line:?}: {e}"))?;
            ports.push(port);
        }
    }
    Ok(ports)
}
