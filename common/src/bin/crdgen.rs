//! Writes the CRD YAML of every custom resource into `deploy/crds/` (or, with `--check`, fails when
//! the files there differ from what the Rust types generate).

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut check = false;
    let mut dir = PathBuf::from("deploy/crds");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            other => {
                eprintln!("crdgen: unknown argument {other}; usage: crdgen [--check] [--dir DIR]");
                return ExitCode::from(2);
            }
        }
    }
    let mut drift = false;
    for (file, crd) in common::crd::all() {
        let yaml = match common::crd::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let path = dir.join(file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!(
                    "crdgen: {} is out of date; run `make crds` and commit it",
                    path.display()
                );
                drift = true;
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, yaml))
        {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if drift {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
