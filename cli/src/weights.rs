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
