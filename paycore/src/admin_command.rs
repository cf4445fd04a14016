//! `paycore admin`: create admins and take the role away, in the gateway's store (crate
//! `paycore-gateway`, module `admin_cli`).

pub use paycore_gateway::admin_cli::AdminArgs;

/// Runs `paycore admin create|grant|revoke`.
pub fn run(args: AdminArgs) -> Result<(), String> {
    paycore_gateway::admin_cli::run(args)
}
