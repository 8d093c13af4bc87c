#[derive(Debug, clap::Args)]
pub struct SendArgs {}
pub fn run(_a: SendArgs) -> Result<(), crate::error::CliError> { Ok(()) }
