//! What `submit` and `run` agree to upload as an input image: a regular file (not a
//! directory, device, pipe or socket) of at most [`MAX_INPUT_BYTES`] whose header
//! decodes as an image format stylefarm reads, with a size. The header is read, never
//! the whole image. A manifest from someone else thus cannot copy
//! `~/.aws/credentials`, `/dev/zero` or a `/proc` file into the shared bucket.
//!
//! The manifest reader checks each local file when it loads (so the error has the
//! manifest line); the upload reads it again through [`read_file`], which checks the
//! bytes it sends, as the file may have changed in between. Objects named by `s3://`
//! are checked with [`check_bytes`] before they are copied into the farm's inputs.

use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use image::ImageReader;

pub use stylefarm_core::limits::MAX_INPUT_BYTES;

/// Why a file or object is not uploaded. `name` is the path or URI as the user gave it.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// It cannot be opened or read.
    #[error("{name} cannot be read: {cause}")]
    Unreadable {
        /// The file.
        name: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A directory, device, pipe or socket.
    #[error("{name} is {kind}, not a regular file: only image files are uploaded")]
    NotAFile {
        /// The file.
        name: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// No bytes (what `/proc` and `/sys` files report as their size).
    #[error("{name} is empty (0 bytes): not an image")]
    Empty {
        /// The file.
        name: String,
    },
    /// Over [`MAX_INPUT_BYTES`].
    #[error("{name} is {bytes} bytes; an input image may have at most {MAX_INPUT_BYTES}")]
    TooLarge {
        /// The file.
        name: String,
        /// Its size.
        bytes: u64,
    },
    /// Its first bytes are not an image header stylefarm reads.
    #[error(
        "{name} is not an image stylefarm reads (JPEG, PNG, WebP, TIFF or OpenEXR): {reason}; only images are uploaded"
    )]
    NotAnImage {
        /// The file.
        name: String,
        /// What the header check found.
        reason: String,
    },
}

/// Checks a local file as [`read_file`] would, reading only its header.
pub fn check_file(path: &Path) -> Result<(), InputError> {
    let file = open(path)?;
    header(&path.display().to_string(), BufReader::new(file)).map(drop)
}

/// Reads a local input image: at most [`MAX_INPUT_BYTES`], and only when it is an image.
/// Returns the bytes and the image's width and height.
pub fn read_file(path: &Path) -> Result<(Vec<u8>, (u32, u32)), InputError> {
    let name = path.display().to_string();
    let file = open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|cause| InputError::Unreadable {
            name: name.clone(),
            cause,
        })?;
    let dims = check_bytes(&name, &bytes)?;
    Ok((bytes, dims))
}

/// Checks bytes read from elsewhere (an `s3://` object): size and image header.
/// Returns the image's width and height.
pub fn check_bytes(name: &str, bytes: &[u8]) -> Result<(u32, u32), InputError> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err(InputError::Empty { name: name.into() });
    }
    if len > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge {
            name: name.into(),
            bytes: len,
        });
    }
    header(name, Cursor::new(bytes))
}

/// Opens a regular, non-empty file of at most [`MAX_INPUT_BYTES`]. What it is comes
/// from its metadata before opening (opening a FIFO would block), and again from the
/// open handle (it may have been replaced in between).
fn open(path: &Path) -> Result<std::fs::File, InputError> {
    let name = || path.display().to_string();
    let unreadable = |cause| InputError::Unreadable {
        name: name(),
        cause,
    };
    check_kind(path, &std::fs::metadata(path).map_err(unreadable)?)?;
    let file = std::fs::File::open(path).map_err(unreadable)?;
    check_kind(path, &file.metadata().map_err(unreadable)?)?;
    Ok(file)
}

fn check_kind(path: &Path, meta: &std::fs::Metadata) -> Result<(), InputError> {
    use std::os::unix::fs::FileTypeExt;
    let name = || path.display().to_string();
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(InputError::NotAFile { name: name(), kind });
    }
    match meta.len() {
        0 => Err(InputError::Empty { name: name() }),
        n if n > MAX_INPUT_BYTES => Err(InputError::TooLarge {
            name: name(),
            bytes: n,
        }),
        _ => Ok(()),
    }
}

/// The format from the first bytes, then the dimensions from the header alone.
fn header<R: std::io::BufRead + std::io::Seek>(name: &str, r: R) -> Result<(u32, u32), InputError> {
    let not_image = |reason: String| InputError::NotAnImage {
        name: name.into(),
        reason,
    };
    let reader =
        ImageReader::new(r)
            .with_guessed_format()
            .map_err(|cause| InputError::Unreadable {
                name: name.into(),
                cause,
            })?;
    let Some(format) = reader.format() else {
        return Err(not_image("its first bytes match no image format".into()));
    };
    match reader.into_dimensions() {
        Ok((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        Ok((w, h)) => Err(not_image(format!(
            "its {format:?} header gives a size of {w}x{h}"
        ))),
        Err(e) => Err(not_image(format!(
            "its {format:?} header does not decode: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]))
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    }

    #[test]
    fn an_openexr_plate_is_an_image_input() {
        let d = tempfile::tempdir().expect("tempdir");
        let plate = d.path().join("sh042.1001.exr");
        image::DynamicImage::ImageRgba32F(image::Rgba32FImage::new(5, 3))
            .save_with_format(&plate, image::ImageFormat::OpenExr)
            .expect("exr");
        assert_eq!(read_file(&plate).expect("an image").1, (5, 3));
    }

    #[test]
    fn an_image_is_read_whole_and_anything_else_is_refused_by_name() {
        let d = tempfile::tempdir().expect("tempdir");
        let good = d.path().join("good.png");
        std::fs::write(&good, png()).expect("write");
        assert_eq!(read_file(&good).expect("an image"), (png(), (3, 2)));
        check_file(&good).expect("an image");

        let secret = d.path().join("credentials.png");
        std::fs::write(&secret, "[default]\naws_secret_access_key = abc\n").expect("write");
        let e = read_file(&secret).expect_err("not an image").to_string();
        assert!(
            e.contains("credentials.png is not an image") && e.contains("match no image format"),
            "{e}"
        );
        // A PNG signature with nothing after it.
        let stub = d.path().join("stub.png");
        std::fs::write(&stub, &png()[..12]).expect("write");
        let e = check_file(&stub).expect_err("no header").to_string();
        assert!(e.contains("Png header does not decode"), "{e}");

        let e = read_file(d.path()).expect_err("a directory").to_string();
        assert!(e.contains("is a directory, not a regular file"), "{e}");
        // Opening a FIFO for reading would wait for a writer: refused before opening.
        let fifo = d.path().join("fifo.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let e = read_file(&fifo).expect_err("a FIFO").to_string();
        assert!(e.contains("fifo.png is a named pipe (FIFO)"), "{e}");
        let e = read_file(Path::new("/dev/zero"))
            .expect_err("a device")
            .to_string();
        assert!(e.contains("/dev/zero is a character device"), "{e}");
        let e = read_file(Path::new("/proc/self/environ"))
            .expect_err("a /proc file")
            .to_string();
        assert!(e.contains("/proc/self/environ is empty"), "{e}");

        // Over the cap: refused from its size, before a byte is read.
        let big = d.path().join("big.png");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_INPUT_BYTES + 1).expect("sparse file");
        let e = read_file(&big).expect_err("too large").to_string();
        assert!(
            e.contains(&format!("is {} bytes", MAX_INPUT_BYTES + 1)),
            "{e}"
        );

        let e = check_bytes("s3://b/k", b"").expect_err("empty").to_string();
        assert!(e.contains("s3://b/k is empty"), "{e}");
        check_bytes("s3://b/k", &png()).expect("an image");
    }
}
