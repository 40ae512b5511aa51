//! The processes of the shop, one module each, and the entry point that runs one by name.

pub mod edge;
pub mod participant;
pub mod saga;

use crate::config::{Env, Role};

/// Runs `role` with the configuration in this process's environment, until SIGTERM.
pub async fn run(role: Role) -> anyhow::Result<()> {
    let env = Env::from_env()?;
    match role {
        Role::Participant(service) => participant::run(service, env).await,
        Role::Saga => saga::run(env).await,
        Role::Gateway => edge::run(env).await,
    }
}
