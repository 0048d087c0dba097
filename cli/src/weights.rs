//! Finding the VGG weights a command runs with.

use std::path::PathBuf;

use anyhow::bail;

/// The weights cache: `$XDG_CACHE_HOME/stylefarm/weights` (or `~/.cache/...`).
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("stylefarm").join("weights"))
}

/// The weights to use: the one given (flag, `STYLEFARM_WEIGHTS` or the manifest), else
/// the only or newest `.safetensors` in the cache, else an error saying how to get one.
pub fn resolve(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("weights file {} does not exist", p.display());
        }
        return Ok(p);
    }
    let cached = cache_dir()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    match cached {
        Some(p) => Ok(p),
        None => bail!(
            "no VGG weights: pass --weights FILE, set STYLEFARM_WEIGHTS, name `weights:` in the manifest, or put a VGG safetensors file in {}",
            cache_dir().map_or_else(|| "~/.cache/stylefarm/weights".into(), |d| d.display().to_string())
        ),
    }
}

/// `stylefarm weights`.
#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// List the weights files in the cache.
    List,
    /// Show what a weights file holds: architecture, convention, layers, sha256.
    Inspect {
        /// A VGG safetensors file.
        file: PathBuf,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `weights` subcommand.
pub fn run(cmd: WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::List => {
            let Some(dir) = cache_dir() else {
                bail!("no cache folder: neither XDG_CACHE_HOME nor HOME is set");
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
            files.sort();
            if files.is_empty() {
                eprintln!(
                    "no weights in {}: copy a VGG safetensors file there, or pass --weights / STYLEFARM_WEIGHTS",
                    dir.display()
                );
                return Ok(());
            }
            let mut rows = vec![vec![
                "FILE".into(),
                "ARCH".into(),
                "CONVENTION".into(),
                "LAYERS".into(),
                "SHA256".into(),
            ]];
            for f in files {
                match stylefarm_weights::WeightsInfo::inspect(&f) {
                    Ok(w) => rows.push(vec![
                        f.display().to_string(),
                        w.architecture.name().into(),
                        w.convention.name().into(),
                        format!(
                            "{}..{}",
                            w.layers.first().cloned().unwrap_or_default(),
                            w.layers.last().cloned().unwrap_or_default()
                        ),
                        w.sha256[..16].to_owned(),
                    ]),
                    Err(e) => rows.push(vec![f.display().to_string(), format!("unreadable: {e}")]),
                }
            }
            print!("{}", crate::cluster::table(&rows));
        }
        WeightsCommand::Inspect { file, json } => {
            let w = stylefarm_weights::WeightsInfo::inspect(&file)?;
            if json {
                let v = serde_json::json!({
                    "path": w.path,
                    "sha256": w.sha256,
                    "architecture": w.architecture.name(),
                    "convention": w.convention.name(),
                    "layers": w.layers,
                    "metadata": w.metadata,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("file          {}", w.path.display());
                println!("sha256        {}", w.sha256);
                println!("architecture  {}", w.architecture.name());
                println!("convention    {}", w.convention.name());
                println!("layers        {}", w.layers.join(" "));
                for (k, v) in &w.metadata {
                    println!("metadata      {k} = {v}");
                }
            }
        }
    }
    Ok(())
}
