//! `paycore gateway`: the HTTP gateway (crate `paycore-gateway`) in front of a core node.

pub use paycore_gateway::GatewayArgs;

/// Serves until SIGINT or SIGTERM.
pub fn run(args: GatewayArgs) -> Result<(), String> {
    paycore_gateway::run(args)
}
