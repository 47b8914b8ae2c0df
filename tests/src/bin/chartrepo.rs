//! Serves a directory over HTTP on loopback, e.g. a Helm repository made with `helm package` and
//! `helm repo index` (hack/run.sh serves tests/charts/genpack this way for the samples).
//!
//!   chartrepo --dir .cluster/charts --address 127.0.0.1:8879

use std::path::PathBuf;

use clap::Parser;
use e2e::static_files::StaticFiles;

#[derive(Parser)]
#[command(about = "Serve a directory (a Helm repository) over HTTP")]
struct Cli {
    /// Directory to serve.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8879")]
    address: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server = StaticFiles::serve(&cli.dir, &cli.address)?;
    eprintln!("serving {} at {}", cli.dir.display(), server.url);
    loop {
        std::thread::park();
    }
}
