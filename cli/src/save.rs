//! Writing a download to disk: streamed into a temporary file beside the destination, checked,
//! then moved into place, so an interrupted download never leaves a half file under the real
//! name, and an existing file is replaced only with `--force`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use reqwest::Response;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::exit::{self, Failure};
use crate::progress::Progress;

/// What was written.
pub struct Saved {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Refuses an existing destination unless `force`.
pub fn check_destination(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        return Err(Failure::new(
            exit::OTHER,
            format!(
                "{} already exists; not overwritten (use --force)",
                path.display()
            ),
        )
        .into());
    }
    Ok(())
}

/// Streams `response` to `path` with a progress bar (over `length_hint` when the answer has no
/// `Content-Length`); when `expected_sha256` is given (the `ETag` of a PDF) the bytes must
/// match it.
pub async fn save(
    mut response: Response,
    path: &Path,
    force: bool,
    length_hint: Option<u64>,
    expected_sha256: Option<&str>,
    progress: Progress,
) -> anyhow::Result<Saved> {
    check_destination(path, force)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let temp = dir.join(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write(
        &mut response,
        &temp,
        length_hint,
        progress,
        name.to_string_lossy(),
    )
    .await;
    let saved = match result {
        Ok(saved) => saved,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    if let Some(expected) = expected_sha256 {
        if !saved.sha256.eq_ignore_ascii_case(expected) {
            let _ = std::fs::remove_file(&temp);
            anyhow::bail!(
                "the download's SHA-256 {} is not the one the API announced ({expected}); nothing written",
                saved.sha256
            );
        }
    }
    let placed = if force {
        std::fs::rename(&temp, path)
    } else {
        // A link fails if the name appeared meanwhile: never overwrite without --force.
        std::fs::hard_link(&temp, path).and_then(|()| std::fs::remove_file(&temp))
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(Saved {
        path: path.to_path_buf(),
        ..saved
    })
}

async fn write(
    response: &mut Response,
    temp: &Path,
    length_hint: Option<u64>,
    progress: Progress,
    name: std::borrow::Cow<'_, str>,
) -> anyhow::Result<Saved> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .await
        .with_context(|| format!("cannot create {}", temp.display()))?;
    // Read before the body: afterwards the size hint says what is left.
    let length = response.content_length();
    let bar = progress.bytes(length.or(length_hint), format!("downloading {name}"));
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.context("the download was cut off")? {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", temp.display()))?;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
    }
    file.flush().await?;
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", temp.display()))?;
    bar.finish_and_clear();
    if let Some(expected) = length {
        anyhow::ensure!(
            expected == bytes,
            "the download was cut off: {bytes} of {expected} bytes"
        );
    }
    Ok(Saved {
        path: temp.to_path_buf(),
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}
