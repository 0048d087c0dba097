//! Manifest parsing, wedge expansion and every kind of bad input with its message
//! (file, line, field, what is allowed).

use std::collections::HashMap;
use std::path::Path;

use stylefarm_cli::manifest::{ImageRef, Manifest, ManifestError};
use stylefarm_core::OptimizerKind;

/// A folder with a manifest and three small images beside it, and the variables its
/// `${NAME}`s see (never the process's: tests run on threads side by side).
struct Dir(tempfile::TempDir, HashMap<String, String>);

impl Dir {
    fn new() -> Self {
        let d = tempfile::tempdir().expect("tempdir");
        for name in ["a.png", "b.png", "c.png"] {
            image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
                .save(d.path().join(name))
                .expect("png");
        }
        Self(d, HashMap::new())
    }

    fn with_env(mut self, name: &str, value: &Path) -> Self {
        self.1.insert(name.to_owned(), value.display().to_string());
        self
    }

    fn load(&self, yaml: &str) -> Result<Manifest, ManifestError> {
        let file = self.0.path().join("batch.yaml");
        std::fs::write(&file, yaml).expect("write");
        Manifest::load_with_env(&file, &|name| self.1.get(name).cloned())
    }

    fn ok(&self, yaml: &str) -> Manifest {
        self.load(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error, checked for its line and field, returned as text.
    fn err(&self, yaml: &str, line: usize, field: &str) -> String {
        let e = self.load(yaml).expect_err("should be refused");
        assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}:{line}: ", self.path("batch.yaml").display())),
            "{text}"
        );
        text
    }

    /// `plates/bg.1.png` to `plates/bg.N.png`, copies of `a.png`.
    fn plates(&self, n: u32) {
        std::fs::create_dir(self.path("plates")).expect("folder");
        for f in 1..=n {
            std::fs::copy(self.path("a.png"), self.path(&format!("plates/bg.{f}.png")))
                .expect("frame");
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.path().join(name)
    }
}

#[test]
fn defaults_jobs_and_wedges_expand_with_readable_unique_names() {
    let d = Dir::new();
    let m = d.ok("batch: looks
priority: 5
defaults:
  size: 128
  iterations: 20
  scales: auto
  style_layers: relu1_1,relu2_1:0.5
jobs:
  - content: a.png
    style: b.png
    params:
      optimizer: adam
      size: 64
      scales: [32, 64]
      scale_iterations: 5
      line_search: none
  - name: blend
    content: a.png
    styles:
      - image: b.png
        weight: 0.7
      - c.png
wedges:
  - name: w
    contents: [a.png, b.png]
    styles:
      - c.png
      - [b.png, c.png]
    params:
      tv_weight: 0
    sweep:
      style_weight: [100, 1e4]
      seed: [1, 2, 3]
");
    assert_eq!(m.batch, "looks");
    assert_eq!(m.priority, 5);
    assert_eq!(m.jobs.len(), 2 + 2 * 2 * 2 * 3);
    let first = &m.jobs[0];
    assert_eq!(first.name, "a_b");
    assert_eq!(first.line, 9);
    assert_eq!(first.params.size, 64, "the job's own value wins");
    assert_eq!(first.params.iterations, 20, "defaults fill the rest");
    assert_eq!(first.params.optimizer, OptimizerKind::Adam);
    assert_eq!(first.params.style_layers[1].weight, 0.5);
    assert_eq!(first.params.scales, [32, 64]);
    assert_eq!(first.params.total_iterations(), 25);
    assert_eq!(first.params.line_search, stylefarm_core::LineSearch::None);
    assert!(m.jobs[1].params.scales.is_empty(), "auto");
    assert_eq!(first.content, ImageRef::Local(d.path("a.png")));
    let blend = &m.jobs[1];
    assert_eq!(
        blend.styles.iter().map(|s| s.1).collect::<Vec<_>>(),
        [0.7, 1.0]
    );
    let names: Vec<&str> = m.jobs[2..].iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names[0], "w-a_c-style_weight100-seed1");
    assert_eq!(names[1], "w-a_c-style_weight100-seed2");
    assert_eq!(names[3], "w-a_c-style_weight1e4-seed1");
    assert_eq!(names[6], "w-a_b+c-style_weight100-seed1");
    assert_eq!(names[12], "w-b_c-style_weight100-seed1");
    let w = &m.jobs[2 + 5];
    assert_eq!(
        (w.params.style_weight, w.params.seed, w.params.tv_weight),
        (1e4, 3, 0.0)
    );
    assert_eq!(w.params.size, 128);
}

#[test]
fn s3_uris_and_environment_variables_are_image_references() {
    let d = Dir::new();
    let root = d.0.path().to_owned();
    let d = d.with_env("STYLEFARM_TEST_ASSETS", &root);
    let m = d.ok("batch: b
jobs:
  - content: ${STYLEFARM_TEST_ASSETS}/a.png
    style: s3://bucket/styles/starry.jpg
");
    assert_eq!(m.jobs[0].content, ImageRef::Local(d.path("a.png")));
    assert_eq!(
        m.jobs[0].styles[0].0,
        ImageRef::S3("s3://bucket/styles/starry.jpg".into())
    );
    assert_eq!(m.jobs[0].name, "a_starry");
    let e = d.err(
        "batch: b
jobs:
  - content: ${STYLEFARM_TEST_UNSET_VARIABLE}/a.png
    style: b.png
",
        3,
        "jobs[0].content",
    );
    assert!(
        e.contains("STYLEFARM_TEST_UNSET_VARIABLE") && e.contains("not set"),
        "{e}"
    );
}

#[test]
fn each_bad_manifest_is_refused_with_its_line_field_and_what_is_allowed() {
    let d = Dir::new();
    let job = "jobs:\n  - content: a.png\n    style: b.png\n";
    let cases: &[(&str, usize, &str, &str)] = &[
        // (manifest, line, field, part of the message)
        (&format!("name: x\n{job}"), 1, "name", "allowed here: batch, priority"),
        (job, 1, "batch", "is required"),
        (&format!("batch: b\ndefaults:\n  sise: 3\n{job}"), 3, "defaults.sise", "the parameters are content_layers, content_weight, init, input_transfer, iterations"),
        (&format!("batch: b\ndefaults:\n  iterations: many\n{job}"), 3, "defaults.iterations", "\"many\" is not a whole number"),
        (&format!("batch: b\ndefaults:\n  size: 5\n{job}"), 3, "defaults.size", "5 is outside 16..=8192"),
        (&format!("batch: b\ndefaults:\n  optimizer: sgd\n{job}"), 3, "defaults.optimizer", "unknown variant `sgd`, expected `lbfgs` or `adam`"),
        (&format!("batch: b\ndefaults:\n  style_layers: relu1_1:heavy\n{job}"), 3, "defaults.style_layers", "not a number"),
        (&format!("batch: b\ndefaults:\n  scales: 256,big\n{job}"), 3, "defaults.scales", "\"big\" is not a whole number of pixels"),
        (&format!("batch: b\ndefaults:\n  scales: [512, 256]\n{job}"), 3, "defaults.scales[1]", "256 does not grow from 512"),
        (&format!("batch: b\ndefaults:\n  scales: [128, 256]\n{job}"), 3, "defaults.scales", "the last scale is 256; it must be the size, 512"),
        (&format!("batch: b\ndefaults:\n  line_search: wolfe\n{job}"), 3, "defaults.line_search", "unknown variant `wolfe`, expected `strong_wolfe` or `none`"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n    params:\n      style_weight: -1\n", 6, "jobs[0].params.style_weight", "not a finite number >= 0"),
        ("batch: b\njobs:\n  - content: missing.png\n    style: b.png\n", 3, "jobs[0].content", "does not exist"),
        ("batch: b\njobs:\n  - content: a.png\n", 3, "jobs[0]", "needs `style`"),
        ("batch: b\njobs:\n  - style: b.png\n", 3, "jobs[0]", "needs `content`"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n    styles: [c.png]\n", 5, "jobs[0]", "not both"),
        ("batch: b\njobs:\n  - content: a.png\n    styles:\n      - image: b.png\n        weight: 0\n", 5, "jobs[0].styles", "sum to 0"),
        ("batch: b\njobs:\n  - content: http://x/a.png\n    style: b.png\n", 3, "jobs[0].content", "only local paths and s3://"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n    params: {init: image}\n", 3, "jobs[0].init_image", "required when init is image"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n  - content: a.png\n    style: b.png\n", 5, "name", "also produced at line 3"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n    name: ../up\n", 3, "jobs[0].name", "not a valid output name"),
        ("batch: b\n", 1, "jobs", "has no jobs"),
        ("batch: b\njobs: [\n", 3, "", "not valid YAML"),
        ("batch: b\nbatch: c\n", 2, "", "appears twice"),
        ("batch: b\nwedges:\n  - contents: [a.png]\n    styles: [b.png]\n    sweep:\n      style_weight: [10, -1]\n", 6, "wedges[0].sweep.style_weight[1]", "-1 is not a finite number >= 0"),
        ("batch: b\nwedges:\n  - contents: []\n    styles: [b.png]\n", 3, "wedges[0].contents", "is empty"),
        ("batch: b\nwedges:\n  - contents: [a.png]\n    styles: [b.png]\n    sweep:\n      seed: 3\n", 6, "wedges[0].sweep.seed", "expected a list"),
    ];
    for (yaml, line, field, message) in cases {
        let text = d.err(yaml, *line, field);
        assert!(
            text.contains(message),
            "{yaml}\n=> {text}\n(wanted {message:?})"
        );
    }
}

#[test]
fn a_wedge_that_expands_past_the_limit_is_refused_before_expanding() {
    let d = Dir::new();
    let values: Vec<String> = (0..400).map(|i| i.to_string()).collect();
    let yaml = format!(
        "batch: b\nwedges:\n  - contents: [a.png]\n    styles: [b.png]\n    sweep:\n      seed: [{v}]\n      style_weight: [{v}]\n",
        v = values.join(", ")
    );
    let text = d.err(&yaml, 3, "wedges[0]");
    assert!(text.contains("more than 100000 jobs"), "{text}");
}

/// The example loads from a clone alone: no variable, every image in examples/images.
#[test]
fn the_example_manifest_is_valid_without_anything_beside_the_checkout() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let m = Manifest::load_with_env(&examples.join("demo.yaml"), &|_: &str| None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.jobs.len(), 5);
    let images = examples
        .join("images")
        .canonicalize()
        .expect("examples/images");
    for job in &m.jobs {
        let refs = std::iter::once(&job.content).chain(job.styles.iter().map(|(s, _)| s));
        for r in refs {
            let ImageRef::Local(p) = r else {
                panic!("{r} is not a local file");
            };
            let p = p
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(p.starts_with(&images), "{}", p.display());
        }
    }
}

#[test]
fn a_manifest_names_only_image_files_and_stylefarm_variables() {
    let d = Dir::new();
    std::fs::write(
        d.path("credentials"),
        "[default]\naws_secret_access_key = abc\n",
    )
    .expect("write");
    std::fs::create_dir(d.path("folder")).expect("mkdir");
    // Set, so that they are refused for what they are, not for being unset.
    let d = d
        .with_env("HOME", Path::new("/root"))
        .with_env("AWS_SECRET_ACCESS_KEY", Path::new("abc"))
        .with_env("STYLEFARM_S3_SECRET_KEY", Path::new("abc"))
        .with_env("STYLEFARM_TOKEN_FILE", Path::new("/root/token"));
    let job =
        |content: &str| format!("batch: b\njobs:\n  - content: {content}\n    style: b.png\n");
    let cases: &[(&str, usize, &str, &str)] = &[
        (&job("credentials"), 3, "jobs[0].content", "credentials is not an image stylefarm reads (JPEG, PNG, WebP, TIFF or OpenEXR): its first bytes match no image format; only images are uploaded"),
        (&job("/dev/zero"), 3, "jobs[0].content", "/dev/zero is a character device, not a regular file"),
        (&job("folder"), 3, "jobs[0].content", "folder is a directory, not a regular file"),
        (&job("/proc/self/environ"), 3, "jobs[0].content", "/proc/self/environ is empty (0 bytes)"),
        ("batch: b\njobs:\n  - content: a.png\n    style: b.png\n    params: {init: image}\n    init_image: credentials\n", 6, "jobs[0].init_image", "is not an image"),
        ("batch: b\nwedges:\n  - contents: [a.png]\n    styles:\n      - [b.png, {image: credentials, weight: 1}]\n", 5, "wedges[0].styles[0][1].image", "is not an image"),
        (&job("${HOME}/.aws/credentials"), 3, "jobs[0].content", "uses ${HOME}, which is refused: a manifest may only use STYLEFARM_* variables"),
        (&job("s3://bucket/${AWS_SECRET_ACCESS_KEY}"), 3, "jobs[0].content", "uses ${AWS_SECRET_ACCESS_KEY}, which is refused"),
        (&job("s3://bucket/${STYLEFARM_S3_SECRET_KEY}"), 3, "jobs[0].content", "${STYLEFARM_S3_SECRET_KEY}, which is refused: its name has SECRET in it, so it may hold a secret"),
        (&job("${STYLEFARM_TOKEN_FILE}"), 3, "jobs[0].content", "its name has TOKEN in it"),
    ];
    for (yaml, line, field, message) in cases {
        let text = d.err(yaml, *line, field);
        assert!(
            text.contains(message),
            "{yaml}\n=> {text}\n(wanted {message:?})"
        );
    }
    // Nothing else is lost: images and STYLEFARM_* variables beside them still load.
    let root = d.0.path().to_owned();
    let d = d.with_env("STYLEFARM_ASSETS", &root);
    let m = d.ok(&job("${STYLEFARM_ASSETS}/a.png"));
    assert_eq!(m.jobs[0].content, ImageRef::Local(d.path("a.png")));
}

#[test]
fn a_numbered_sequence_is_one_job_per_frame_named_with_its_padded_number() {
    let d = Dir::new();
    std::fs::create_dir(d.path("plates")).expect("folder");
    for f in 1001..=1006 {
        std::fs::copy(d.path("a.png"), d.path(&format!("plates/sh042.{f}.png"))).expect("frame");
    }
    let m = d.ok("batch: shot
defaults:
  input_transfer: linear
jobs:
  - content: plates/sh042.####.png
    frames: 1001-1005x2
    style: b.png
  - name: graded
    content: plates/sh042.%04d.png
    frames: 1006, 1002
    style: c.png
wedges:
  - name: w
    contents: [plates/sh042.####.png, a.png]
    frames: 1001-1002
    styles: [b.png, c.png]
");
    let got: Vec<(&str, Option<u32>)> = m.jobs.iter().map(|j| (j.name.as_str(), j.frame)).collect();
    let want: Vec<(&str, Option<u32>)> = vec![
        ("sh042_b.1001", Some(1001)),
        ("sh042_b.1003", Some(1003)),
        ("sh042_b.1005", Some(1005)),
        ("graded.1006", Some(1006)),
        ("graded.1002", Some(1002)),
        // A wedge: one sequence per look, the still beside it as before.
        ("w-sh042_b.1001", Some(1001)),
        ("w-sh042_b.1002", Some(1002)),
        ("w-sh042_c.1001", Some(1001)),
        ("w-sh042_c.1002", Some(1002)),
        ("w-a_b", None),
        ("w-a_c", None),
    ];
    assert_eq!(got, want);
    assert!(m
        .jobs
        .iter()
        .all(|j| j.params.input_transfer == stylefarm_core::Transfer::Linear));
    assert_eq!(
        m.jobs[1].content,
        ImageRef::Local(d.path("plates/sh042.1003.png"))
    );
    assert_eq!(
        m.jobs[3].content,
        ImageRef::Local(d.path("plates/sh042.1006.png"))
    );
    // A sequence in S3 is named frame by frame; the bucket is read at submit.
    let s3 = d.ok("batch: s
jobs:
  - content: s3://plates/sh010/sh010.%05d.exr
    frames: 7-8
    style: b.png
");
    assert_eq!(
        s3.jobs
            .iter()
            .map(|j| (j.name.as_str(), j.content.to_string()))
            .collect::<Vec<_>>(),
        [
            (
                "sh010_b.00007",
                "s3://plates/sh010/sh010.00007.exr".to_owned()
            ),
            (
                "sh010_b.00008",
                "s3://plates/sh010/sh010.00008.exr".to_owned()
            )
        ]
    );
}

#[test]
fn a_sequence_with_missing_frames_or_no_frames_is_refused_naming_what_is_wrong() {
    let d = Dir::new();
    for f in [1, 2, 4] {
        std::fs::copy(d.path("a.png"), d.path(&format!("sh.{f:03}.png"))).expect("frame");
    }
    let missing = d.err(
        "batch: b
jobs:
  - content: sh.###.png
    frames: 1-6
    style: b.png
",
        3,
        "jobs[0].content",
    );
    assert!(
        missing.contains("3 of 6 frames") && missing.contains("003, 005, 006"),
        "{missing}"
    );
    let no_frames = d.err(
        "batch: b\njobs:\n  - content: sh.###.png\n    style: b.png\n",
        3,
        "jobs[0].content",
    );
    assert!(no_frames.contains("say which with `frames`"), "{no_frames}");
    let still = d.err(
        "batch: b\njobs:\n  - content: a.png\n    frames: 1-2\n    style: b.png\n",
        4,
        "jobs[0].frames",
    );
    assert!(still.contains("one image"), "{still}");
    let range = d.err(
        "batch: b\njobs:\n  - content: sh.###.png\n    frames: 4-1\n    style: b.png\n",
        4,
        "jobs[0].frames",
    );
    assert!(range.contains("ends before it starts"), "{range}");
    let style = d.err(
        "batch: b\njobs:\n  - content: a.png\n    style: sh.###.png\n",
        4,
        "jobs[0].style",
    );
    assert!(style.contains("only a job's content"), "{style}");
}

#[test]
fn jobs_run_after_others_by_name_and_a_chained_sequence_runs_frame_after_frame() {
    let d = Dir::new();
    d.plates(3);
    let m = d.ok("batch: shot
jobs:
  - name: bg
    content: plates/bg.#.png
    frames: 1-3
    chain: true
    style: b.png
  - name: slate
    content: a.png
    style: c.png
    after: bg
  - name: final
    content: a.png
    style: b.png
    after: [slate, bg.2]
");
    let after: Vec<(&str, Vec<&str>)> = m
        .jobs
        .iter()
        .map(|j| {
            (
                j.name.as_str(),
                j.after.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        after,
        vec![
            ("bg.1", vec![]),
            ("bg.2", vec!["bg.1"]),
            ("bg.3", vec!["bg.2"]),
            ("slate", vec!["bg.1", "bg.2", "bg.3"]),
            ("final", vec!["bg.2", "slate"]),
        ],
        "a sequence's name stands for all its frames"
    );
    let job = "jobs:\n  - content: a.png\n    style: b.png\n";
    let e = d.err(&format!("batch: b\n{job}    after: nothing\n"), 3, "after");
    assert!(
        e.contains("\"nothing\" names no job of this manifest"),
        "{e}"
    );
    let e = d.err(
        &format!("batch: b\n{job}    chain: true\n"),
        5,
        "jobs[0].chain",
    );
    assert!(e.contains("only a sequence's frames chain"), "{e}");
}

#[test]
fn a_temporal_sequence_chains_its_frames_and_names_each_frame_s_predecessor() {
    let d = Dir::new();
    d.plates(3);
    let m = d.ok("batch: shot
jobs:
  - name: bg
    content: plates/bg.#.png
    frames: 1-3
    style: b.png
    temporal: {weight: 150}
  - name: plain
    content: plates/bg.#.png
    frames: 1-2
    style: c.png
    temporal: {}
wedges:
  - name: w
    contents: [plates/bg.#.png, a.png]
    frames: 2-3
    styles: [b.png, c.png]
    temporal: {weight: 50}
");
    let summary: Vec<(&str, Vec<&str>, Option<&str>, f64)> = m
        .jobs
        .iter()
        .map(|j| {
            (
                j.name.as_str(),
                j.after.iter().map(String::as_str).collect(),
                j.previous.as_ref().map(|(n, _)| n.as_str()),
                j.params.temporal_weight,
            )
        })
        .collect();
    let default = stylefarm_core::params::DEFAULT_TEMPORAL_WEIGHT;
    assert_eq!(
        summary[..5],
        [
            ("bg.1", vec![], None, 150.0),
            ("bg.2", vec!["bg.1"], Some("bg.1"), 150.0),
            ("bg.3", vec!["bg.2"], Some("bg.2"), 150.0),
            ("plain.1", vec![], None, default),
            ("plain.2", vec!["plain.1"], Some("plain.1"), default),
        ]
    );
    // Each frame's predecessor content is the frame before it.
    let bg3 = &m.jobs[2];
    let (_, content) = bg3.previous.as_ref().expect("previous");
    assert_eq!(content, &m.jobs[1].content);
    // A wedge: one chained sequence per look; the still is left alone.
    let wedge: Vec<(&str, Vec<&str>, Option<&str>)> = m.jobs[5..]
        .iter()
        .map(|j| {
            (
                j.name.as_str(),
                j.after.iter().map(String::as_str).collect(),
                j.previous.as_ref().map(|(n, _)| n.as_str()),
            )
        })
        .collect();
    assert_eq!(wedge.len(), 6, "{wedge:?}");
    for pair in wedge.chunks(2).take(2) {
        assert_eq!(pair[0].1, Vec::<&str>::new(), "{wedge:?}");
        assert_eq!(pair[1].1, vec![pair[0].0], "{wedge:?}");
        assert_eq!(pair[1].2, Some(pair[0].0), "{wedge:?}");
    }
    for still in &wedge[4..] {
        assert!(still.1.is_empty() && still.2.is_none(), "{wedge:?}");
    }

    let job = "jobs:\n  - content: a.png\n    style: b.png\n";
    let e = d.err(
        &format!("batch: b\n{job}    temporal: {{weight: 10}}\n"),
        5,
        "jobs[0].temporal",
    );
    assert!(e.contains("temporal coherence is for a sequence"), "{e}");
    let seq = "jobs:\n  - content: plates/bg.#.png\n    frames: 1-2\n    style: b.png\n";
    for bad in ["0", "-3", "1e9", "lots"] {
        let e = d.err(
            &format!("batch: b\n{seq}    temporal: {{weight: {bad}}}\n"),
            6,
            "jobs[0].temporal.weight",
        );
        assert!(!e.is_empty());
    }
    let e = d.err(
        &format!("batch: b\n{seq}    temporal: {{wieght: 3}}\n"),
        6,
        "jobs[0].temporal.wieght",
    );
    assert!(e.contains("allowed here: weight"), "{e}");
    // The weight is the sequence's, not a parameter of its own (nor a swept one).
    let e = d.err(
        &format!("batch: b\n{seq}    params: {{temporal_weight: 3}}\n"),
        6,
        "jobs[0].params.temporal_weight",
    );
    assert!(e.contains("`temporal: {weight: W}`"), "{e}");
}
