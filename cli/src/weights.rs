//! Finding the VGG weights a command runs with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use stylefarm_weights::torchvision::{self, Published};
use stylefarm_weights::Architecture;

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

/// A network torchvision publishes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Network {
    /// VGG16 (528 MB download).
    Vgg16,
    /// VGG19 (548 MB download).
    Vgg19,
}

impl Network {
    fn architecture(self) -> Architecture {
        match self {
            Self::Vgg16 => Architecture::Vgg16,
            Self::Vgg19 => Architecture::Vgg19,
        }
    }
}

/// `stylefarm weights`.
#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Download torchvision's ImageNet weights, check their sha256 and convert the
    /// `features` to safetensors in the cache.
    Fetch {
        /// Which network.
        network: Network,
        /// Convert a copy of the published file instead of downloading it (offline).
        #[arg(long, value_name = "FILE", conflicts_with = "url")]
        from: Option<PathBuf>,
        /// Download from a mirror instead of download.pytorch.org. The file must still
        /// be torchvision's (its SHA-256 is checked against the published one).
        #[arg(long)]
        url: Option<String>,
        /// Accept a file other than torchvision's published one, with this full SHA-256
        /// (64 hex digits) that you know from elsewhere.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
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
        WeightsCommand::Fetch {
            network,
            from,
            url,
            sha256,
        } => {
            let path = fetch(
                network.architecture(),
                from.as_deref(),
                url.as_deref(),
                sha256.as_deref(),
            )?;
            let info = stylefarm_weights::WeightsInfo::inspect(&path)?;
            println!("{}", path.display());
            eprintln!(
                "{} ({} convention, {} layers), sha256 {}",
                info.architecture.name(),
                info.convention.name(),
                info.layers.len(),
                info.sha256
            );
        }
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

/// Largest download accepted (the published files are about 550 MB).
const MAX_DOWNLOAD: u64 = 2 << 30;

/// Gets the published file (or the copy given), checks it against the SHA-256 prefix
/// torchvision publishes for it (never the one in the name of the file or URL given),
/// or against the full `sha256` the user gives for another file, converts it and
/// stores the result in the cache. Returns the safetensors path.
pub fn fetch(
    arch: Architecture,
    from: Option<&std::path::Path>,
    url: Option<&str>,
    sha256: Option<&str>,
) -> anyhow::Result<PathBuf> {
    if let Some(h) = sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--sha256 must be 64 hex digits, the whole SHA-256 of the file");
        }
    }
    let published = Published::of(arch);
    let url = url.unwrap_or(published.url);
    let (bytes, source) = match from {
        Some(p) => (read_copy(p)?, p.display().to_string()),
        None => (download(arch, url)?, url.to_owned()),
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    if let Some(given) = sha256 {
        if !sha.eq_ignore_ascii_case(given) {
            bail!("{source}: sha256 {sha} is not the {given} given with --sha256");
        }
    } else if !sha.starts_with(published.sha256_prefix) {
        let expected = published.sha256_prefix;
        bail!(
            "{source}: sha256 {sha} does not start with {expected}, the hash torchvision publishes for {}: \
             a damaged or different file (to convert another torchvision-layout file, give its \
             whole SHA-256 with --sha256)",
            published.url.rsplit('/').next().unwrap_or(published.url)
        );
    }
    let converted = torchvision::convert(&bytes, arch, &format!("{source} sha256 {sha}"))
        .with_context(|| format!("converting {source}"))?;
    let dir = cache_dir().context("no cache folder: neither XDG_CACHE_HOME nor HOME is set")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{}-torchvision.safetensors", arch.name()));
    stylefarm_core::fs::write_atomic(&out, &converted)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// Reads a local copy: a regular file no larger than any published one.
fn read_copy(p: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", p.display());
    }
    if meta.len() > MAX_DOWNLOAD {
        bail!(
            "{}: {} bytes, larger than any published VGG file ({MAX_DOWNLOAD} bytes at most)",
            p.display(),
            meta.len()
        );
    }
    // Read through the handle checked above's path once more, never past the cap (the
    // file may have been swapped since).
    let file = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_DOWNLOAD + 1), &mut bytes)
        .with_context(|| format!("reading {}", p.display()))?;
    if bytes.len() as u64 > MAX_DOWNLOAD {
        bail!("{}: grew past {MAX_DOWNLOAD} bytes while read", p.display());
    }
    Ok(bytes)
}

fn download(arch: Architecture, url: &str) -> anyhow::Result<Vec<u8>> {
    eprintln!("downloading {url}");
    let offline = |cause: String| {
        anyhow::anyhow!(
            "cannot download {url}: {cause}\nWithout internet access, download that file on another machine and run \
             `stylefarm weights fetch {} --from FILE`, or pass any VGG safetensors file with --weights or STYLEFARM_WEIGHTS",
            arch.name()
        )
    };
    // A machine without internet access learns it within seconds, not minutes.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        // A mirror that stalls mid-file ends the download instead of hanging it.
        .timeout_recv_body(Some(Duration::from_secs(3600)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| offline(e.to_string()))?;
    let len = resp.body().content_length();
    let bar = indicatif::ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes:>10} / {total_bytes} [{bar:40}] {bytes_per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let capacity = usize::try_from(len.unwrap_or(0).min(MAX_DOWNLOAD)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    let mut reader = resp.body_mut().with_config().limit(MAX_DOWNLOAD).reader();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut reader, &mut chunk).map_err(|e| offline(e.to_string()))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(bytes)
}
