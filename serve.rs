#[derive(Debug, clap::Args)]
pub struct ServeArgs {}
pub fn run(_a: ServeArgs) -> Result<(), crate::error::CliError> { Ok(()) }
