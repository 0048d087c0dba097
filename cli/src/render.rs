//! `stylefarm render`: one style transfer on this machine, with a progress bar, the final
//! losses on stdout, and `OUT.json` beside the output.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use stylefarm_core::fs::write_atomic;
use stylefarm_core::params::{parse_layer_list, DEFAULT_ADAM_LR};
use stylefarm_core::{
    InitKind, InvalidField, LineSearch, OptimizerKind, OutputFormat, Pooling, RenderParams,
    Transfer, WeightedLayer,
};
use stylefarm_weights::WeightsInfo;
use stylefarm_worker::device::{DeviceArg, MemoryBudget};
use stylefarm_worker::engine::{image_io, Outcome, Render};
use stylefarm_worker::job::{self, JobInputs, NamedBytes, PreparedJob};

/// Arguments of `stylefarm render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The content photo (JPEG, PNG, WebP, TIFF or OpenEXR).
    #[arg(long, value_name = "IMAGE")]
    pub content: PathBuf,
    /// A style image; repeat to blend several.
    #[arg(long = "style", value_name = "IMAGE", required = true)]
    pub styles: Vec<PathBuf>,
    /// Blend weights, one per style, e.g. 0.7,0.3 (default: equal).
    #[arg(long, value_delimiter = ',', value_name = "W,..")]
    pub style_weights: Vec<f64>,
    /// The output image (its extension, .png, .exr or .jpg, names its format unless
    /// --format does); its sidecar goes to OUT.json.
    #[arg(long, value_name = "IMAGE")]
    pub out: PathBuf,
    /// The output's format: png (8 or 16 bits, sRGB), exr (half float, linear light) or
    /// jpg (8 bits, quality 95) [default: from --out's extension, else png]. PNG and
    /// OpenEXR carry the content's alpha channel when it has one.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    /// VGG weights (safetensors); see `README.md` for where to get them.
    #[arg(long, env = "STYLEFARM_WEIGHTS", value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Long side of the output in pixels.
    #[arg(long, default_value_t = RenderParams::default().size)]
    pub size: u32,
    /// Optimizer iterations (at the first scale when there are several).
    #[arg(long, default_value_t = RenderParams::default().iterations)]
    pub iterations: u32,
    /// Long sides to optimize at, coarse to fine and ending at --size, e.g.
    /// 256,362,512; `auto`: one scale up to 512 px, above it from 256 px growing by
    /// sqrt(2).
    #[arg(long, default_value = "auto", value_name = "auto|PX,..")]
    pub scales: String,
    /// Iterations at each scale after the first [default: half of --iterations].
    #[arg(long, value_name = "N")]
    pub scale_iterations: Option<u32>,
    /// Optimize scales larger than PX in overlapping PX x PX tiles; without it, only
    /// when --max-job-memory needs tiles, then the largest that fit [default: whole].
    #[arg(long, value_name = "PX")]
    pub tile: Option<u32>,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = RenderParams::default().optimizer)]
    pub optimizer: OptimizerKind,
    /// L-BFGS's step rule: a strong Wolfe line search, or the fixed step.
    #[arg(long, value_enum, default_value_t = RenderParams::default().line_search)]
    pub line_search: LineSearch,
    /// Learning rate (default: the optimizer's own, see below).
    #[arg(long, help = learning_rate_help())]
    pub learning_rate: Option<f64>,
    /// L-BFGS: how many past steps shape the next (more: better steps, two image-sized
    /// vectors of memory each).
    #[arg(long, default_value_t = RenderParams::default().lbfgs_history, value_name = "N")]
    pub lbfgs_history: u32,
    /// Seed for noise initialisation.
    #[arg(long, default_value_t = RenderParams::default().seed)]
    pub seed: u64,
    /// Start from the content, noise, or --init-image.
    #[arg(long, value_enum, default_value_t = RenderParams::default().init)]
    pub init: InitKind,
    /// Start image for --init image.
    #[arg(long, value_name = "IMAGE")]
    pub init_image: Option<PathBuf>,
    /// Keep the content's colours (luminance-only transfer).
    #[arg(long)]
    pub preserve_colors: bool,
    /// Content layers, e.g. relu3_2 or relu4_2:1.0 [default: relu4_2, or the deepest
    /// reluN_2 the weights hold].
    #[arg(long, value_name = "L[:W],..")]
    pub content_layers: Option<String>,
    /// Style layers with optional weights, e.g. relu1_1,relu2_1:0.5 [default: relu1_1 to
    /// relu5_1, as many as the weights hold].
    #[arg(long, value_name = "L[:W],..")]
    pub style_layers: Option<String>,
    /// Weight of the content term.
    #[arg(long, default_value_t = RenderParams::default().content_weight)]
    pub content_weight: f64,
    /// Weight of the style term.
    #[arg(long, default_value_t = RenderParams::default().style_weight)]
    pub style_weight: f64,
    /// Weight of the total-variation term.
    #[arg(long, default_value_t = RenderParams::default().tv_weight)]
    pub tv_weight: f64,
    /// Style images are resized to size * style-scale.
    #[arg(long, default_value_t = RenderParams::default().style_scale)]
    pub style_scale: f64,
    /// Max or average pooling.
    #[arg(long, value_enum, default_value_t = RenderParams::default().pooling)]
    pub pooling: Pooling,

    /// What the input images' values are: auto (linear for OpenEXR, else sRGB), srgb,
    /// or linear (encoded to sRGB for the network; values above 1 clip).
    #[arg(long, value_enum, default_value_t = RenderParams::default().input_transfer)]
    pub input_transfer: Transfer,
    /// Bits per channel of a PNG output (8 or 16).
    #[arg(long, default_value_t = RenderParams::default().output_bit_depth)]
    pub bit_depth: u8,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "STYLEFARM_THREADS")]
    pub threads: Option<i32>,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "auto", env = "STYLEFARM_DEVICE")]
    pub device: DeviceArg,
    /// Largest input accepted, in pixels; larger files are refused before decoding.
    #[arg(long, default_value_t = image_io::DEFAULT_MAX_PIXELS)]
    pub max_input_pixels: u64,
    /// The most memory the render may take (e.g. 6GiB); a render whose estimate is over
    /// it stops before decoding. Default: 80% of the host's memory (90% of the GPU's).
    #[arg(long, env = "STYLEFARM_MAX_JOB_MEMORY", value_name = "SIZE", value_parser = stylefarm_worker::device::parse_size)]
    pub max_job_memory: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn learning_rate_help() -> String {
    format!(
        "Learning rate (default: {} for L-BFGS, {DEFAULT_ADAM_LR} for Adam)",
        RenderParams::default().learning_rate
    )
}

/// The flag of each `RenderParams` field that `render` takes, for messages: a field is
/// matched on its name alone (`style_layers[1].weight` is `--style-layers`), never by
/// rewriting the message.
const FLAGS: &[(&str, &str)] = &[
    ("size", "--size"),
    ("iterations", "--iterations"),
    ("scales", "--scales"),
    ("scale_iterations", "--scale-iterations"),
    ("tile", "--tile"),
    ("optimizer", "--optimizer"),
    ("line_search", "--line-search"),
    ("learning_rate", "--learning-rate"),
    ("lbfgs_history", "--lbfgs-history"),
    ("content_weight", "--content-weight"),
    ("style_weight", "--style-weight"),
    ("tv_weight", "--tv-weight"),
    ("content_layers", "--content-layers"),
    ("style_layers", "--style-layers"),
    ("style_scale", "--style-scale"),
    ("seed", "--seed"),
    ("init", "--init"),
    ("preserve_colors", "--preserve-colors"),
    ("pooling", "--pooling"),
    ("output_bit_depth", "--bit-depth"),
    ("input_transfer", "--input-transfer"),
    ("output_format", "--format"),
];

/// `--bit-depth: 12 is not 8 or 16` for a field error; a field without a flag keeps
/// its own name.
pub fn flag_error(e: &InvalidField) -> String {
    let head = e.field.split(['[', '.']).next().unwrap_or(&e.field);
    let rest = &e.field[head.len()..];
    match FLAGS.iter().find(|(field, _)| *field == head) {
        Some((_, flag)) => format!("invalid {flag}{rest}: {}", e.reason),
        None => format!("invalid parameter {e}"),
    }
}

fn layers(
    flag: &str,
    value: &Option<String>,
    default: Vec<WeightedLayer>,
) -> anyhow::Result<Vec<WeightedLayer>> {
    match value {
        None => Ok(default),
        Some(s) => parse_layer_list(s).map_err(|e| anyhow::anyhow!("{flag}: {e}")),
    }
}

impl RenderArgs {
    /// The output's format: `--format`, else `--out`'s extension, else PNG; the two must
    /// agree when both name one.
    fn output_format(&self) -> anyhow::Result<OutputFormat> {
        let named = OutputFormat::from_name(&self.out.to_string_lossy());
        match (self.format, named) {
            (Some(f), Some(n)) if f != n => bail!(
                "--out {} is a .{} file but --format is {}",
                self.out.display(),
                n.as_str(),
                f.as_str()
            ),
            (Some(f), _) | (None, Some(f)) => Ok(f),
            (None, None) => Ok(OutputFormat::Png),
        }
    }

    /// The engine parameters these flags ask for, validated.
    pub fn params(&self) -> anyhow::Result<RenderParams> {
        let defaults = RenderParams::default();
        let optimizer = self.optimizer;
        let params = RenderParams {
            size: self.size,
            iterations: self.iterations,
            scales: stylefarm_core::params::parse_scales(&self.scales)
                .map_err(|e| anyhow::anyhow!("--scales: {e}"))?,
            scale_iterations: self.scale_iterations.unwrap_or(0),
            line_search: self.line_search,
            lbfgs_history: self.lbfgs_history,
            optimizer,
            learning_rate: self.learning_rate.unwrap_or(match optimizer {
                OptimizerKind::Lbfgs => defaults.learning_rate,
                OptimizerKind::Adam => DEFAULT_ADAM_LR,
            }),
            content_weight: self.content_weight,
            style_weight: self.style_weight,
            tv_weight: self.tv_weight,
            content_layers: layers(
                "--content-layers",
                &self.content_layers,
                defaults.content_layers.clone(),
            )?,
            style_layers: layers(
                "--style-layers",
                &self.style_layers,
                defaults.style_layers.clone(),
            )?,
            style_scale: self.style_scale,
            seed: self.seed,
            init: self.init.clone(),
            preserve_colors: self.preserve_colors,
            pooling: self.pooling,
            output_bit_depth: self.bit_depth,
            output_format: self.output_format()?,
            input_transfer: self.input_transfer,
            tile: self.tile.unwrap_or(0),
            ..defaults
        };
        params
            .validate()
            .map_err(|e| anyhow::anyhow!(flag_error(&e)))?;
        if matches!(params.init, InitKind::Image) != self.init_image.is_some() {
            bail!("--init image and --init-image go together");
        }
        if !self.style_weights.is_empty() && self.style_weights.len() != self.styles.len() {
            bail!(
                "--style-weights has {} values for {} --style images",
                self.style_weights.len(),
                self.styles.len()
            );
        }
        Ok(params)
    }
}

/// Finds the weights file or says how to supply one.
pub fn weights_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    given.map(Path::to_path_buf).ok_or_else(|| {
        anyhow::anyhow!(
            "no VGG weights given: pass --weights FILE or set STYLEFARM_WEIGHTS \
             (a safetensors file of torchvision's VGG16/VGG19 `features`, see README.md)"
        )
    })
}

/// Sidecar path for an output: `OUT.json` beside it.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Loss plot path for an output: `OUT.loss.svg` beside it.
pub fn plot_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".loss.svg");
    PathBuf::from(s)
}

/// Runs `stylefarm render`.
pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let params = args.params()?;
    let device = args.device.resolve()?;
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    let weights_file = weights_path(args.weights.as_deref())?;
    let weights = WeightsInfo::inspect(&weights_file)?;

    let equal = 1.0 / args.styles.len() as f64;
    let inputs = JobInputs {
        previous: None,
        content: NamedBytes::read(&args.content)?,
        styles: args
            .styles
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok((
                    NamedBytes::read(p)?,
                    args.style_weights.get(i).copied().unwrap_or(equal),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        init_image: args
            .init_image
            .as_deref()
            .map(NamedBytes::read)
            .transpose()?,
    };
    let budget = MemoryBudget::for_device(device, 1, args.max_job_memory);
    let prepared = PreparedJob::decode(&inputs, &params, args.max_input_pixels, &weights, &budget)?;
    let params = prepared.params.clone();
    let mut render = Render::new(&weights, &params, &prepared.inputs, device)?;
    let setup_s = started.elapsed().as_secs_f64();
    let (w, h) = render.output_size();
    tracing::info!(width = w, height = h, ?device, "rendering");
    let schedule = params.schedule();
    if schedule.len() > 1 && !args.quiet {
        eprintln!(
            "scales: {}",
            stylefarm_core::params::describe_schedule(&schedule)
        );
    }
    if params.tile > 0 && params.size > params.tile && !args.quiet {
        let why = if args.tile.is_some() {
            "--tile"
        } else {
            "the whole image is over --max-job-memory"
        };
        eprintln!(
            "tiles: scales above {} px in {0} x {0} px tiles ({why})",
            params.tile
        );
    }

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(render.total_iterations()))
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32}] {pos}/{len} it  {per_sec}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let cancel = AtomicBool::new(false);
    let outcome = render.run(&cancel, &mut |p| {
        bar.set_position(u64::from(p.iteration));
        let scale = if p.scales > 1 {
            format!("scale {}/{} {} px  ", p.scale + 1, p.scales, p.side)
        } else {
            String::new()
        };
        bar.set_message(format!(
            "{scale}loss {:.4e} (content {:.3e} style {:.3e} tv {:.3e})",
            p.losses.total, p.losses.content, p.losses.style, p.losses.tv
        ));
    })?;
    bar.finish_and_clear();

    let out_name = args.out.display().to_string();
    let rendered = job::finish(
        &render, &prepared, &params, &weights, device, &out_name, started, setup_s,
    )?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(&args.out, &rendered.image)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let sidecar = sidecar_path(&args.out);
    let json = serde_json::to_vec_pretty(&rendered.sidecar)?;
    write_atomic(&sidecar, &json).with_context(|| format!("writing {}", sidecar.display()))?;

    let s = &rendered.sidecar;
    let plot = plot_path(&args.out);
    let curve = stylefarm_core::plot::Curve {
        points: s
            .loss_curve
            .iter()
            .map(|l| [l.total, l.content, l.style, l.tv])
            .collect(),
        scales: s.schedule.iter().map(|r| (r.first_loss, r.side)).collect(),
        stride: 1,
    };
    let title = args
        .out
        .file_name()
        .map_or_else(|| out_name.clone(), |n| n.to_string_lossy().into_owned());
    write_atomic(
        &plot,
        stylefarm_core::plot::loss_svg(&title, &curve).as_bytes(),
    )
    .with_context(|| format!("writing {}", plot.display()))?;
    let first = s.loss_curve.first().copied().unwrap_or_default();
    println!(
        "{} ({}x{}, {} iterations{} in {:.1}s, {:.3}s/it)",
        args.out.display(),
        s.width,
        s.height,
        s.iterations_done,
        if outcome == Outcome::Converged {
            ", converged"
        } else {
            ""
        },
        s.timings.optimize_s,
        s.timings.per_iteration_s
    );
    println!(
        "final losses: total {:.4e}  content {:.4e}  style {:.4e}  tv {:.4e}",
        s.final_losses.total, s.final_losses.content, s.final_losses.style, s.final_losses.tv
    );
    println!(
        "style loss: {:.4e} -> {:.4e} ({:.1}x lower)",
        first.style,
        s.final_losses.style,
        first.style / s.final_losses.style.max(f64::MIN_POSITIVE)
    );
    println!("sidecar: {}", sidecar.display());
    println!("loss plot: {}", plot.display());
    Ok(())
}
