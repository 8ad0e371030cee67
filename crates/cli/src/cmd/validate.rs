//! `braid validate FILE...`: check chain descriptors, report every problem.

use std::path::PathBuf;

use braid_runtime::validate::{read_descriptor, validate_file_text, LoadError};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid validate examples/sample.yaml\n  braid validate examples/*.yaml"
)]
pub struct Args {
    /// Chain descriptor files (YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut bad = 0usize;
    for file in &args.files {
        let name = file.display().to_string();
        let text = match read_descriptor(file) {
            Ok(t) => t,
            Err(LoadError::Read { source, .. }) => {
                eprintln!("{name}: cannot read: {source}");
                bad += 1;
                continue;
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
                continue;
            }
        };
        let report = validate_file_text(file, &text);
        match report.descriptor {
            Some(d) if report.problems.is_empty() => {
                println!("{name}: ok: chain `{}` with {} NFs", d.name, d.nfs.len());
            }
            _ => {
                for p in &report.problems {
                    eprintln!("{p}");
                }
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} descriptors have problems", args.files.len());
    }
    Ok(())
}
